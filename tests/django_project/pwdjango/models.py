import os

from django.db import models


class Row(models.Model):
    """One row per job run: which process ran it, through which database backend."""

    job_id = models.CharField(max_length=32)
    pid = models.IntegerField()
    backend = models.IntegerField()

    class Meta:
        app_label = "pwdjango"
        db_table = os.environ.get("PW_DJANGO_TABLE", "pwdjango_row")
