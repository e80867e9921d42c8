// Template: benches/throughput.py copies this into a temporary build directory and appends
// `replace` lines pointing at $BENCH_GOCRAFT_DIR and Debian's /usr/share/gocode.
module prefork-work/benches/gocraft-bench

go 1.19

require (
	github.com/gocraft/work v0.0.0
	github.com/gomodule/redigo v1.8.3
)
