package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/compose"
	"github.com/latchkey/latchkey/check/inproc"
	"github.com/latchkey/latchkey/check/powerloss"
	"github.com/latchkey/latchkey/check/procs"
	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

func checkCmd(ctx context.Context, args []string) error {
	fs := newFlags("check", `check [--duration D] [--clients N] [--keys N] [--locks N] [--seed N] [--in-process | --faults processes] [--edges LIST] [--watch]

Drives concurrent traffic (gets of both consistencies, puts, CAS puts,
deletes, scans, lock sessions with fenced writes) against the deployment at
--server, records every operation, and checks linearizability (porcupine),
stale reads, scans, lock safety, fencing and durability. With --in-process it
starts its own 3-node NATS cluster and the services instead, and injects
faults on a schedule reproducible with --seed. With --faults processes
(run from inside the clone) it builds nats-server (cached under
~/.cache/latchkey/bin) and the service binaries, runs them as separate
processes, and injects SIGKILLs, SIGSTOP pauses, network partitions (route
and client proxies) and, with --power-loss, power cuts. --edges adds
workloads aimed at TTL instants and fence bounds (ttl: writes at the instant a key's TTL
runs out; renew: renewals at a lease's end with a contender right after;
fence-ttl: fences next to TTLs; fences: keys fenced by many locks; or all).
--watch also follows the namespace with a watch and checks its events.
Progress goes to stderr, the summary to stdout; the exit code is 1 when a
violation was found.
See docs/CORRECTNESS.md.`)
	duration := fs.Duration("duration", 30*time.Second, "how long to drive traffic")
	clients := fs.Int("clients", 8, "concurrent clients")
	keys := fs.Int("keys", 16, "keys in the key space")
	locks := fs.Int("locks", 4, "lock names (key i is fenced by lock i%locks)")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "seed of the workload and the fault schedule")
	inProcess := fs.Bool("in-process", false, "start an in-process 3-node cluster with the services and inject faults")
	noFaults := fs.Bool("no-faults", false, "with --in-process: inject no faults")
	pause := fs.Bool("pause-holder", false, "schedule paused lock holders (always on with --in-process unless --no-faults)")
	staleBound := fs.Duration("stale-bound", 15*time.Second, "how far behind a stale get may be")
	opTimeout := fs.Duration("op-timeout", 2*time.Second, "timeout of one request; past it the outcome is unknown")
	namespace := fs.String("namespace", "", `prefix of the keys and lock names used (default "latchkey-check/<seed>/")`)
	out := fs.String("out", os.TempDir(), "directory for porcupine's visualisation on a violation")
	edgesFlag := fs.String("edges", "", "edge workloads, comma-separated: ttl, renew, fence-ttl, fences, or all")
	edgeKeys := fs.Int("edge-keys", 24, "keys and locks each edge burst aims at at once")
	faults := fs.String("faults", "", "processes: start nats-server, storage, router and locker as separate processes and inject SIGKILL, SIGSTOP and partition faults; in-process: as --in-process")
	faultKinds := fs.String("fault-kinds", "", "with --faults processes or --compose: only these fault kinds, comma-separated (processes: "+strings.Join(procs.AllFaultKinds, ", ")+"; compose: "+strings.Join(compose.AllFaultKinds, ", ")+")")
	syncAlways := fs.Bool("sync-always", false, "with --faults processes: sync_interval always on every server")
	powerLoss := fs.Bool("power-loss", false, "with --faults processes: put each server's store on a FUSE mount that drops what was not fsynced, and add power-loss faults (needs /dev/fuse)")
	workDir := fs.String("work-dir", "", "with --faults processes: keep data, configs and process logs in this directory (default: a temporary one, removed)")
	watch := fs.Bool("watch", false, "also follow the namespace with a watch and check its events (per key in revision order, covering every acknowledged change)")
	history := fs.String("history", "", "write every recorded operation to this file as JSON lines")
	reshard := fs.Bool("reshard", false, "also move the shard set back and forth (one more shard, then back) between faults, as admin: with --in-process, or against --server (latchkey dev serves a new shard id by itself)")
	composeProject := fs.String("compose", "", "inject docker kill, pause and network disconnect faults into the containers of this Docker Compose project (deploy/compose); traffic goes to --server with the global credentials flags")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos); err != nil {
		return err
	}
	if *duration <= 0 || *clients < 1 || *keys < 1 || *locks < 1 {
		return usagef("--duration, --clients, --keys and --locks must be positive")
	}
	edges, err := check.ParseEdges(*edgesFlag)
	if err != nil {
		return usagef("--edges: %v", err)
	}
	edges.Keys = *edgeKeys
	cfg := check.Config{
		Edges:    edges,
		Duration: *duration, Clients: *clients, Keys: *keys, Locks: *locks, Seed: *seed,
		Namespace: *namespace, OpTimeout: *opTimeout, StaleBound: *staleBound,
		PauseHolder: *pause, Progress: os.Stderr, OutDir: *out, HistoryFile: *history, Watch: *watch,
	}
	if *composeProject != "" && (*faults != "" || *inProcess) {
		return usagef("--compose injects into a running deployment: not with --faults or --in-process")
	}
	switch *faults {
	case "", "processes":
	case "in-process", "inproc":
		*inProcess = true
	default:
		return usagef("--faults: want processes or in-process, not %q", *faults)
	}
	if *reshard && (*faults == "processes" || *composeProject != "") {
		return usagef("--reshard: with --in-process or --server; the process and compose deployments do not serve a spare shard id yet")
	}
	var lost func() powerloss.Lost
	if *faults == "processes" {
		dir := *workDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "latchkey-check-procs"); err != nil {
				return err
			}
			defer os.RemoveAll(dir)
		} else if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		var kinds []string
		if *faultKinds != "" {
			for _, k := range strings.Split(*faultKinds, ",") {
				if !slices.Contains(procs.AllFaultKinds, k) {
					return usagef("--fault-kinds: no fault kind %q (want %s)", k, strings.Join(procs.AllFaultKinds, ", "))
				}
				if k == procs.PowerLoss && !*powerLoss {
					return usagef("--fault-kinds power-loss needs --power-loss")
				}
				kinds = append(kinds, k)
			}
		}
		d, err := procs.Start(ctx, procs.Options{Dir: dir, Prefix: global.prefix, ClientTimeout: *opTimeout,
			SyncAlways: *syncAlways, PowerLoss: *powerLoss, Log: os.Stderr, Faults: kinds})
		if err != nil {
			return fmt.Errorf("starting the process deployment: %w", err)
		}
		defer d.Close()
		cfg.Connect = d.Connect
		if !*noFaults {
			cfg.Injector, cfg.PauseHolder = d, true
		}
		if *powerLoss {
			lost = d.Lost
		}
	} else if *inProcess {
		dir, err := os.MkdirTemp("", "latchkey-check")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		fmt.Fprintf(os.Stderr, "starting an in-process 3-node cluster with 2 instances of every service\n")
		o := inproc.Options{Dir: dir, Prefix: global.prefix, ClientTimeout: *opTimeout}
		if *reshard {
			o.SpareShards = 1
		}
		d, err := inproc.Start(ctx, o)
		if err != nil {
			return fmt.Errorf("starting the in-process deployment: %w", err)
		}
		defer d.Close()
		cfg.Connect = d.Connect
		if !*noFaults {
			cfg.Injector, cfg.PauseHolder = d, true
		}
		if *reshard {
			c, err := d.Connect(ctx, 0)
			if err != nil {
				return err
			}
			if err := addResharder(ctx, &cfg, c.Conn()); err != nil {
				return err
			}
		}
	} else {
		if *composeProject != "" {
			var kinds []string
			if *faultKinds != "" {
				kinds = strings.Split(*faultKinds, ",")
			}
			inj, err := compose.New(ctx, compose.Options{Project: *composeProject, Kinds: kinds, Log: os.Stderr})
			if err != nil {
				return usagef("--compose: %v", err)
			}
			defer inj.Close(context.Background())
			if !*noFaults {
				cfg.Injector, cfg.PauseHolder = inj, true
			}
		}
		var conns []*nats.Conn
		defer func() {
			for _, nc := range conns {
				nc.Close()
			}
		}()
		cfg.Connect = func(_ context.Context, i int) (*client.Client, error) {
			// Short pings: a client left on a frozen or cut-off server
			// (--compose pauses and disconnects them) moves on in
			// seconds, so the figures show the deployment, not the
			// checker's own connections.
			nc, err := nats.Connect(global.server, connectOptions(fmt.Sprintf("latchkey-check-%d", i),
				nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
				nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))...)
			if err != nil {
				return nil, &unreachableError{server: global.server, err: err}
			}
			conns = append(conns, nc)
			return client.New(nc, client.WithPrefix(global.prefix), client.WithTimeout(*opTimeout)), nil
		}
	}
	if *reshard && !*inProcess {
		nc, err := nats.Connect(global.server, connectOptions("latchkey-check-admin")...)
		if err != nil {
			return &unreachableError{server: global.server, err: err}
		}
		defer nc.Close()
		if err := addResharder(ctx, &cfg, nc); err != nil {
			return err
		}
	}
	rep, err := check.Run(ctx, cfg)
	if rep != nil {
		rep.Print(os.Stdout)
	}
	if lost != nil {
		l := lost()
		fmt.Printf("power cuts dropped %d bytes not fsynced in %d file(s) (sync_interval %s)\n", l.Bytes, l.Files,
			map[bool]string{true: "always", false: "default, 2 min"}[*syncAlways])
	}
	if errors.Is(err, check.ErrViolations) {
		return fmt.Errorf("%w (seed %d)", err, *seed)
	}
	return err
}

// addResharder adds shard moves to cfg's faults, driven through nc (which
// must be allowed latchkey.admin.>).
func addResharder(ctx context.Context, cfg *check.Config, nc *nats.Conn) error {
	subj := subjects.New(global.prefix)
	call := func(ctx context.Context, endpoint string, req, resp proto.Message) error {
		return service.Call(ctx, nc, subj.Public("admin.shards."+endpoint), nil, req, resp)
	}
	r, err := check.NewResharder(ctx, call)
	if err != nil {
		return err
	}
	sets := r.Sets()
	fmt.Fprintf(os.Stderr, "resharding between %v and %v\n", sets[0], sets[1])
	if cfg.Injector == nil {
		cfg.Injector = r
	} else {
		cfg.Injector = check.Combine(cfg.Injector, r)
	}
	return nil
}
