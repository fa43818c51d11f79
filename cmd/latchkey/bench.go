package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/latchkey/latchkey/bench"
)

const benchSynopsis = `bench [workload...] [flags]

Runs workloads against latchkey and, in the same run and on the same NATS
server, against the raw NATS/JetStream paths under them (the floors), and
prints every latchkey figure with its ratio to its floor. Without --server
it starts its own deployment in this process (NATS embedded, data in a
temporary directory). --peers runs the same workloads on etcd (embedded)
and Redis (redis-server, if installed). --cluster 3 runs that deployment on
a 3-node NATS cluster with R3 buckets (floors R3 too) and etcd as 3
members, and adds the ratio to etcd at equal durability and topology.

Workloads: ` + "get get-stale put cas mix90 mix50 scan lock lock-contended handoff" + ` (default: all)

Examples:
  latchkey bench                                   # every workload, 64 clients, 5 s each
  latchkey bench get put --clients 1,4,16,64 --plot bench.svg
  latchkey bench --peers --sync both --runs 3 --json bench.json
  latchkey bench --cluster 3 --sync always --peers  # R3 next to a 3-member etcd
  latchkey bench --memory 1000000                  # footprint and restart time of a storage instance
  latchkey bench get --server nats://host:4222     # a running deployment (no --sync there)`

func benchCmd(ctx context.Context, args []string) error {
	fs := newFlags("bench", benchSynopsis)
	duration := fs.Duration("duration", 5*time.Second, "how long each workload runs at each concurrency")
	clients := fs.String("clients", "64", "client concurrency, or a comma-separated list (each a separate run)")
	valueSize := fs.Int("value-size", 100, "bytes per value")
	keys := fs.Int("keys", 10000, "key space of reads, writes and mixes (preloaded)")
	dist := fs.String("dist", "uniform", "key popularity: uniform or zipfian")
	scanLimit := fs.Int("scan-limit", 100, "page size of the scan workload")
	runs := fs.Int("runs", 1, "runs per figure; the median (by ops/s) is reported")
	conns := fs.Int("conns", 4, "NATS connections (etcd clients) the clients share")
	shards := fs.Int("shards", 3, "shards of the in-process deployment")
	cluster := fs.Int("cluster", 1, "NATS servers of the in-process deployment: 1, or 3 (a cluster, R3 buckets; with --peers a 3-member etcd)")
	sync := fs.String("sync", "default", "JetStream sync of the in-process deployment: default, always (sync_interval always), or both")
	syncAlways := fs.Bool("sync-always", false, "shorthand for --sync always")
	noFloors := fs.Bool("no-floors", false, "skip the raw NATS/JetStream floors")
	peers := fs.Bool("peers", false, "also run etcd (embedded) and Redis (needs redis-server)")
	jsonOut := fs.String("json", "", "write the results as JSON to this file (- = stdout)")
	csvOut := fs.String("csv", "", "write the results as CSV to this file (- = stdout)")
	plot := fs.String("plot", "", "write an SVG chart of throughput and p50 against concurrency to this file")
	memory := fs.Int("memory", 0, "instead of workloads: load this many keys into a shard and measure a storage instance's memory and restart time")
	quiet := fs.Bool("quiet", false, "no progress lines")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (services, NATS and clients share this process) to this file")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	serverSet := false
	fs.Visit(func(f *flag.Flag) { serverSet = serverSet || f.Name == "server" })
	if *cluster != 1 && *cluster != 3 {
		return usagef("--cluster %d: want 1 (one server) or 3 (a 3-node cluster with R3 buckets)", *cluster)
	}
	if *cluster == 3 && serverSet {
		return usagef("--cluster 3 starts its own in-process cluster; with --server the deployment is given (drop one of them)")
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	if *memory > 0 {
		dir, err := os.MkdirTemp("", "latchkey-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if progress != nil {
			fmt.Fprintf(progress, "loading %d keys of %d bytes into one shard, then starting a storage instance on it\n", *memory, *valueSize)
		}
		fig, err := bench.MeasureStorage(ctx, dir, *memory, *valueSize, nil)
		if err != nil {
			return err
		}
		fmt.Println(fig)
		return nil
	}

	p := bench.Plan{
		Workloads: bench.AllWorkloads,
		Duration:  *duration,
		Runs:      *runs,
		Spec:      bench.Spec{Keys: *keys, ValueSize: *valueSize, Dist: *dist, ScanLimit: *scanLimit},
		Conns:     *conns,
		Prefix:    global.prefix,
		Shards:    *shards,
		Nodes:     *cluster,
		Floors:    !*noFloors,
		Peers:     *peers,
		Progress:  progress,
		Seed:      time.Now().UnixNano(),
	}
	if len(pos) > 0 {
		for _, w := range pos {
			if !slices.Contains(bench.AllWorkloads, w) {
				return usagef("unknown workload %q; known: %s", w, strings.Join(bench.AllWorkloads, " "))
			}
		}
		p.Workloads = pos
	}
	for _, c := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			return usagef("--clients %q: want positive numbers separated by commas", *clients)
		}
		p.Clients = append(p.Clients, n)
	}
	if *dist != "uniform" && *dist != "zipfian" {
		return usagef("--dist %q: want uniform or zipfian", *dist)
	}
	if *keys < 1 || *valueSize < 0 || *scanLimit < 1 || *scanLimit > 1000 || *duration <= 0 || *shards < 1 {
		return usagef("--keys, --scan-limit (1..1000), --duration and --shards must be positive, --value-size not negative")
	}
	if *syncAlways {
		*sync = "always"
	}
	switch *sync {
	case "default", "always":
		p.Sync = []string{*sync}
	case "both":
		p.Sync = []string{"default", "always"}
	default:
		return usagef("--sync %q: want default, always or both", *sync)
	}
	if serverSet {
		if *sync != "default" {
			return usagef("--sync %s needs the in-process deployment; a running server keeps its own sync setting", *sync)
		}
		p.Server = global.server
	}
	if *peers {
		if _, err := bench.FindRedis(); err != nil {
			fmt.Fprintf(os.Stderr, "latchkey bench: %s\n", bench.RedisInstall)
		}
	}

	rep, err := bench.Execute(ctx, p)
	if rep != nil && len(rep.Results) > 0 {
		out := io.Writer(os.Stdout)
		if *jsonOut == "-" || *csvOut == "-" {
			out = os.Stderr
		}
		fmt.Fprintf(out, "\nlatchkey bench %s\n", strings.Join(args, " "))
		rep.Plan = "latchkey bench " + strings.Join(args, " ")
		rep.WriteTable(out)
		if werr := writeOut(*jsonOut, rep.WriteJSON); werr != nil && err == nil {
			err = werr
		}
		if werr := writeOut(*csvOut, rep.WriteCSV); werr != nil && err == nil {
			err = werr
		}
		if werr := writeOut(*plot, rep.WriteSVG); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// writeOut writes with write to path ("" = nowhere, "-" = stdout).
func writeOut(path string, write func(io.Writer) error) error {
	switch path {
	case "":
		return nil
	case "-":
		return write(os.Stdout)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
