// Command gocraft-bench: gocraft/work on the benches' throughput workload (no-op jobs).
//
// This is our own driver, not gocraft's bench_work program. It is not built by `go build`
// in this directory: gocraft/work is not vendored or downloaded. benches/throughput.py
// (system "gocraft") builds it in a temporary directory against a local copy of
// gocraft/work's sources named by $BENCH_GOCRAFT_DIR (e.g. BENCH_GOCRAFT_DIR=/tmp/gocraft-work),
// with github.com/gomodule/redigo and github.com/robfig/cron/v3 taken from Debian's
// /usr/share/gocode (packages golang-github-gomodule-redigo-dev, golang-github-robfig-cron-dev).
// The go.mod next to this file is the template; the build writes the `replace` lines.
// See benches/README.md.
//
// Modes:
//
//	-mode all      enqueue -jobs jobs, then process them (gocraft's own benchmark shape)
//	-mode enqueue  only enqueue
//	-mode work     only process: start a WorkerPool of -concurrency goroutines with a no-op
//	               handler per name, wait until -jobs jobs ran, print the JSON line, exit
//
// Jobs are enqueued with work.NewEnqueuer(...).Enqueue, one call (LPUSH + the enqueuer's
// cached known-jobs SADD) per job, round robin over -names. Finished jobs are counted with an
// atomic counter in process; with -counter-key the count is also added to that Redis key
// every 5 ms (INCRBY of the delta), as the Python systems do (benches/done.py), so the
// harness can watch the run and take Redis stats. The printed "seconds" runs from the
// moment the pool is started to the moment the last job is counted.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gocraft/work"
	"github.com/gomodule/redigo/redis"
)

type ctx struct{}

func main() {
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address host:port")
	namespace := flag.String("namespace", "bench-gocraft", "gocraft/work namespace")
	jobs := flag.Int("jobs", 100000, "number of jobs")
	names := flag.String("names", "noop0,noop1,noop2,noop3,noop4", "comma-separated job names")
	concurrency := flag.Uint("concurrency", 20, "worker goroutines in the pool")
	mode := flag.String("mode", "all", "all | enqueue | work")
	counterKey := flag.String("counter-key", "", "if set, INCRBY finished jobs into this key every 5ms")
	version := flag.String("version", "unknown", "gocraft/work version to report")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long")
	flag.Parse()

	jobNames := strings.Split(*names, ",")
	pool := &redis.Pool{
		MaxActive: int(*concurrency) + 10,
		MaxIdle:   int(*concurrency) + 10,
		Wait:      true,
		Dial:      func() (redis.Conn, error) { return redis.Dial("tcp", *addr) },
	}
	defer pool.Close()

	if *mode == "all" || *mode == "enqueue" {
		started := time.Now()
		enq := work.NewEnqueuer(*namespace, pool)
		for i := 0; i < *jobs; i++ {
			if _, err := enq.Enqueue(jobNames[i%len(jobNames)], nil); err != nil {
				fail("enqueue: %v", err)
			}
		}
		if *mode == "enqueue" {
			emit(map[string]interface{}{"version": *version, "jobs": *jobs,
				"enqueue_seconds": time.Since(started).Seconds()})
			return
		}
	}
	if *mode != "all" && *mode != "work" {
		fail("unknown -mode %q", *mode)
	}

	var done int64
	finished := make(chan struct{})
	target := int64(*jobs)
	noop := func(*work.Job) error {
		if atomic.AddInt64(&done, 1) == target {
			close(finished)
		}
		return nil
	}
	wp := work.NewWorkerPool(ctx{}, *concurrency, *namespace, pool)
	for _, name := range jobNames {
		wp.Job(name, noop)
	}

	stopFlush := make(chan struct{})
	flushed := make(chan struct{})
	if *counterKey != "" {
		go flushCounter(pool, *counterKey, &done, stopFlush, flushed)
	} else {
		close(flushed)
	}

	started := time.Now()
	wp.Start()
	select {
	case <-finished:
	case <-time.After(*timeout):
		fail("timed out after %s with %d/%d jobs done", *timeout, atomic.LoadInt64(&done), target)
	}
	seconds := time.Since(started).Seconds()
	close(stopFlush)
	<-flushed
	wp.Stop()
	emit(map[string]interface{}{"version": *version, "jobs": *jobs, "seconds": seconds,
		"concurrency": *concurrency})
}

// flushCounter adds the in-process count to key every 5 ms, and once more when stopped.
func flushCounter(pool *redis.Pool, key string, done *int64, stop <-chan struct{}, flushed chan<- struct{}) {
	defer close(flushed)
	conn := pool.Get()
	defer conn.Close()
	var sent int64
	flush := func() {
		if n := atomic.LoadInt64(done); n > sent {
			if _, err := conn.Do("INCRBY", key, n-sent); err != nil {
				fmt.Fprintf(os.Stderr, "counter: %v\n", err)
				return
			}
			sent = n
		}
	}
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-stop:
			flush()
			return
		case <-ticker.C:
			flush()
		}
	}
}

func emit(v map[string]interface{}) {
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gocraft-bench: "+format+"\n", args...)
	os.Exit(1)
}
