// Package procs runs a latchkey deployment as separate processes on
// loopback, for `latchkey check --faults processes` and its CI test, and
// injects real faults into it: a three-node JetStream cluster of
// nats-server processes (the binary built from its Go module) with file
// stores, two storage instances, a router and a locker (the real service
// binaries, built from this checkout). Every route between the servers,
// and every client connection, runs through a TCP proxy the injector
// controls, so partitions are real socket cuts; SIGKILL, SIGSTOP and
// SIGCONT are real signals.
//
// Route gossip cannot bypass the proxies: every server advertises its
// cluster address as a sink that accepts and closes, and no_advertise
// keeps client URLs of other servers out of INFO. Start and every
// partition verify through each server's /routez that every route is one
// a proxy carries.
package procs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/powerloss"
	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/tcpproxy"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/router/consistenthash"
	"github.com/nats-io/nats.go"
)

// Fault kinds this injector causes.
const (
	KillNode         = "kill-node"          // Target: node; SIGKILL, restarted at heal
	KillStreamLeader = "kill-stream-leader" // Target: shard; SIGKILL of the node leading its stream
	KillAllNodes     = "kill-all-nodes"     // SIGKILL of every server at once, restarted at heal
	KillStorage      = "kill-storage"       // Target: storage instance; SIGKILL, restarted at heal
	KillRouter       = "kill-router"        // SIGKILL of the router, restarted at heal
	KillLocker       = "kill-locker"        // SIGKILL of the locker, restarted at heal
	PauseNode        = "pause-node"         // Target: node; SIGSTOP, SIGCONT at heal
	PauseStorage     = "pause-storage"      // Target: storage instance; SIGSTOP, SIGCONT at heal
	IsolateNode      = "partition-isolate"  // Target: node cut off (routes and clients)
	IsolateLeader    = "partition-leader"   // Target: shard; its stream leader alone in the minority
	Bridge           = "partition-bridge"   // Target: node b; routes a-b and b-c stay, a-c is cut
	// PowerLoss SIGKILLs every server and drops what each had not
	// fsynced (Options.PowerLoss: stores on check/powerloss mounts).
	PowerLoss = "power-loss"
)

// Options configures a deployment.
type Options struct {
	Dir    string // data, configs, logs and binaries; required
	Prefix string // subject prefix; "" = latchkey
	Shards int    // default 3
	// ClientTimeout is the default timeout of the clients Connect makes.
	ClientTimeout time.Duration
	// SyncAlways sets sync_interval: always on every server.
	SyncAlways bool
	// Log hears what the deployment does (builds, starts, faults).
	Log io.Writer
	// Faults restricts Faults() to these kinds; empty = all.
	Faults []string
	// PowerLoss puts every server's store on its own check/powerloss FUSE
	// mount and adds the power-loss fault. Needs FUSE (/dev/fuse, root).
	PowerLoss bool
	// LieAboutSync, with PowerLoss, makes the mounts acknowledge fsyncs
	// without keeping anything: a planted bug for the self-test.
	LieAboutSync bool
	// LockerUnsafe, when any switch is on, runs the locker inside this
	// process (the real locker package, on a connection through the
	// client proxies) with those safety checks off, because the binary
	// has no such switches: only the self-test sets it.
	LockerUnsafe locker.Unsafe
}

const nodes = 3

// Deployment is a running process deployment; it is a check.Injector.
type Deployment struct {
	o    Options
	bins map[string]string // nats, storage, router, locker
	subj subjects.Set

	sink         net.Listener
	routeProxies map[[2]int]*tcpproxy.Proxy // [from, to]: from dials to through it
	clientProxy  [nodes]*tcpproxy.Proxy
	node         [nodes]*proc
	http         [nodes]int // monitoring ports, for /routez and /healthz
	clientPort   [nodes]int // fixed across restarts: the proxies point at them
	svcs         map[string][]*proc

	mu      sync.Mutex
	cut     map[[2]int]bool     // route pairs (low, high) cut now
	aimed   map[check.Fault]int // node a leader fault chose
	clients []*nats.Conn
	direct  [nodes]*nats.Conn // straight to each server, for planted reads
	planted *locker.Server    // the in-process locker of Options.LockerUnsafe
	plantNC *nats.Conn
	mounts  [nodes]*powerloss.FS
	// LostAtPowerLoss accumulates what the power cuts dropped.
	lost powerloss.Lost
}

// Start builds (or finds) the binaries, starts the cluster and the
// services, and returns once every service answers.
func Start(ctx context.Context, o Options) (_ *Deployment, err error) {
	if o.Dir == "" {
		return nil, errors.New("procs: Options.Dir is required")
	}
	if o.Shards <= 0 {
		o.Shards = 3
	}
	if o.ClientTimeout <= 0 {
		o.ClientTimeout = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	d := &Deployment{o: o, subj: subjects.New(o.Prefix), routeProxies: map[[2]int]*tcpproxy.Proxy{},
		svcs: map[string][]*proc{}, cut: map[[2]int]bool{}, aimed: map[check.Fault]int{}}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	natsBin, err := NATSServer(ctx, o.Log)
	if err != nil {
		return nil, err
	}
	binDir := filepath.Join(o.Dir, "bin")
	if err := os.MkdirAll(filepath.Join(o.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	if d.bins, err = BuildServices(ctx, binDir, o.Log); err != nil {
		return nil, err
	}
	d.bins["nats"] = natsBin
	if d.sink, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	go tcpproxy.Sink(d.sink)
	var clusterPort [nodes]int
	clientPort := &d.clientPort
	for i := range nodes {
		for _, p := range []*int{&clientPort[i], &clusterPort[i], &d.http[i]} {
			if *p, err = tcpproxy.FreePort(); err != nil {
				return nil, err
			}
		}
		if d.clientProxy[i], err = tcpproxy.To(fmt.Sprintf("127.0.0.1:%d", clientPort[i])); err != nil {
			return nil, err
		}
	}
	for i := range nodes {
		for j := range nodes {
			if i != j {
				if d.routeProxies[[2]int{i, j}], err = tcpproxy.To(fmt.Sprintf("127.0.0.1:%d", clusterPort[j])); err != nil {
					return nil, err
				}
			}
		}
	}
	fmt.Fprintf(o.Log, "starting 3 nats-server processes (file stores under %s, sync %s), routes and clients through proxies\n",
		o.Dir, map[bool]string{true: "always", false: "default"}[o.SyncAlways])
	for i := range nodes {
		conf, err := d.writeConfig(i, clientPort[i], clusterPort[i])
		if err != nil {
			return nil, err
		}
		d.node[i] = d.newProc(fmt.Sprintf("n%d", i), natsBin, []string{"-c", conf}, false)
		if err := d.node[i].start(); err != nil {
			return nil, err
		}
	}
	for i := range nodes {
		if err := waitPort(ctx, clientPort[i], 30*time.Second); err != nil {
			return nil, fmt.Errorf("nats-server n%d: %w", i, err)
		}
		if d.direct[i], err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", clientPort[i]), nats.Name("latchkey-check-direct"),
			nats.IgnoreDiscoveredServers(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true)); err != nil {
			return nil, err
		}
	}
	if err := d.waitShape(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if err := d.waitHealthy(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "cluster routed only through the proxies (checked via /routez); starting storage x2, router, locker\n")
	urls := d.proxyURLs()
	shardIDs := make([]string, o.Shards)
	for k := range shardIDs {
		shardIDs[k] = fmt.Sprint(k)
	}
	common := []string{"--server", urls, "--prefix", o.Prefix, "--log-level", "warn"}
	for i := range 2 {
		d.svcs["storage"] = append(d.svcs["storage"], d.newProc(fmt.Sprintf("storage-%d", i), d.bins["storage"],
			append(append([]string(nil), common...), "--shards", strings.Join(shardIDs, ","), "--replicas", "3"), true))
	}
	d.svcs["router"] = []*proc{d.newProc("router-0", d.bins["router"], append(append([]string(nil), common...), "--shards", fmt.Sprint(o.Shards), "--replicas", "3"), true)}
	if o.LockerUnsafe == (locker.Unsafe{}) {
		d.svcs["locker"] = []*proc{d.newProc("locker-0", d.bins["locker"], append(append([]string(nil), common...), "--replicas", "3"), true)}
	}
	for _, kind := range []string{"storage", "router", "locker"} {
		for _, p := range d.svcs[kind] {
			if err := p.start(); err != nil {
				return nil, err
			}
		}
	}
	if o.LockerUnsafe != (locker.Unsafe{}) {
		fmt.Fprintf(o.Log, "PLANTED: the locker runs in this process with %+v\n", o.LockerUnsafe)
		if d.plantNC, err = nats.Connect(urls, nats.IgnoreDiscoveredServers(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond)); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			if d.planted, err = locker.Start(ctx, d.plantNC, locker.Config{Prefix: o.Prefix, Replicas: 3, Unsafe: o.LockerUnsafe}); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("planted locker: %w", err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	if err := d.waitServices(ctx, 90*time.Second); err != nil {
		return nil, err
	}
	if o.PowerLoss && (!o.SyncAlways || o.LieAboutSync) {
		// With the default sync the servers write their stream metadata
		// (meta.inf, raft state) without fsync; a cut in its first 30 s
		// would find it still unwritten and lose the streams themselves.
		// A deployment that has been up a while has it on disk: wait for
		// the mounts' write-back so the cuts measure lost messages. (A disk
		// lying about fsync loses it likewise.)
		fmt.Fprintf(o.Log, "waiting 31 s for the write-back of the metadata the servers wrote without fsync\n")
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(31 * time.Second):
		}
	}
	fmt.Fprintf(o.Log, "deployment ready; process logs in %s\n", filepath.Join(o.Dir, "logs"))
	return d, nil
}

func (d *Deployment) writeConfig(i, clientPort, clusterPort int) (string, error) {
	store := filepath.Join(d.o.Dir, fmt.Sprintf("n%d", i))
	if err := os.MkdirAll(store, 0o755); err != nil {
		return "", err
	}
	if d.o.PowerLoss {
		raw := filepath.Join(d.o.Dir, "raw", fmt.Sprintf("n%d", i))
		if err := os.MkdirAll(raw, 0o755); err != nil {
			return "", err
		}
		// Write-back as Linux does it by default: what stayed dirty
		// 30 s reached the disk anyway.
		m, err := powerloss.Mount(raw, store, powerloss.Options{LieAboutSync: d.o.LieAboutSync, Writeback: 30 * time.Second})
		if err != nil {
			return "", err
		}
		d.mounts[i] = m
	}
	var routes []string
	for j := range nodes {
		if j != i {
			routes = append(routes, fmt.Sprintf("nats-route://%s", d.routeProxies[[2]int{i, j}].Addr()))
		}
	}
	sync := ""
	if d.o.SyncAlways {
		sync = "\n  sync_interval: always"
	}
	conf := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream {
  store_dir: %q%s
}
cluster {
  name: latchkey-procs
  listen: 127.0.0.1:%d
  # Gossip would hand out this address: a sink, so implicit routes fail
  # and every route runs through the injector's proxies.
  advertise: %q
  no_advertise: true
  routes: [%s]
}
`, i, clientPort, d.http[i], store, sync, clusterPort, d.sink.Addr().String(), strings.Join(routes, ", "))
	path := filepath.Join(d.o.Dir, fmt.Sprintf("n%d.conf", i))
	return path, os.WriteFile(path, []byte(conf), 0o644)
}

// proxyURLs lists the client proxies, node first first, so connections
// spread over the nodes and fail over to the others.
func (d *Deployment) proxyURLs(first ...int) string {
	f := 0
	if len(first) > 0 {
		f = first[0]
	}
	var out []string
	for k := range nodes {
		out = append(out, "nats://"+d.clientProxy[(f+k)%nodes].Addr())
	}
	return strings.Join(out, ",")
}

// URL is a client URL list of the deployment (through the proxies).
func (d *Deployment) URL() string { return d.proxyURLs() }

// Connect returns a client on its own connection, to node i%3 first,
// through the client proxies (so a partition cuts it too).
func (d *Deployment) Connect(_ context.Context, i int) (*client.Client, error) {
	nc, err := nats.Connect(d.proxyURLs(i%nodes), nats.Name(fmt.Sprintf("check-client-%d", i)), nats.DontRandomize(),
		nats.IgnoreDiscoveredServers(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true),
		// A client on a SIGSTOPped server leaves it within about 3 s, as
		// a careful user's would, so the figures show the deployment.
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.clients = append(d.clients, nc)
	d.mu.Unlock()
	return client.New(nc, client.WithPrefix(d.o.Prefix), client.WithTimeout(d.o.ClientTimeout)), nil
}

// Faults lists the faults the deployment injects (Options.Faults
// restricts the kinds). Pauses are held 2-15 s, longer than an election;
// partitions 3-12 s.
func (d *Deployment) Faults() []check.Fault {
	pause := func(f check.Fault) check.Fault { f.MinHold, f.MaxHold = 2*time.Second, 15*time.Second; return f }
	part := func(f check.Fault) check.Fault { f.MinHold, f.MaxHold = 3*time.Second, 12*time.Second; return f }
	var fs []check.Fault
	for i := range nodes {
		fs = append(fs, check.Fault{Kind: KillNode, Target: i}, pause(check.Fault{Kind: PauseNode, Target: i}),
			part(check.Fault{Kind: IsolateNode, Target: i}), part(check.Fault{Kind: Bridge, Target: i}))
	}
	for s := 0; s < d.o.Shards; s++ {
		fs = append(fs, check.Fault{Kind: KillStreamLeader, Target: s}, part(check.Fault{Kind: IsolateLeader, Target: s}))
	}
	for i := range d.svcs["storage"] {
		fs = append(fs, check.Fault{Kind: KillStorage, Target: i}, pause(check.Fault{Kind: PauseStorage, Target: i}))
	}
	fs = append(fs, check.Fault{Kind: KillRouter}, check.Fault{Kind: KillAllNodes})
	if d.o.PowerLoss {
		fs = append(fs, check.Fault{Kind: PowerLoss})
	}
	if len(d.svcs["locker"]) > 0 {
		fs = append(fs, check.Fault{Kind: KillLocker})
	}
	if len(d.o.Faults) == 0 {
		return fs
	}
	var out []check.Fault
	for _, f := range fs {
		for _, k := range d.o.Faults {
			if f.Kind == k {
				out = append(out, f)
			}
		}
	}
	return out
}

// AllFaultKinds names every kind Faults can return, for flags.
var AllFaultKinds = []string{KillNode, KillStreamLeader, KillAllNodes, KillStorage, KillRouter, KillLocker,
	PauseNode, PauseStorage, IsolateNode, IsolateLeader, Bridge, PowerLoss}

// Inject causes f and returns once it is in effect.
func (d *Deployment) Inject(ctx context.Context, f check.Fault) error {
	switch f.Kind {
	case KillNode:
		return d.node[f.Target%nodes].kill()
	case KillAllNodes, PowerLoss:
		errs := make([]error, nodes, 2*nodes)
		var wg sync.WaitGroup
		for i := range nodes {
			// Signalled as close together as goroutines allow: the
			// point is that no server outlives another to sync.
			wg.Go(func() { errs[i] = d.node[i].signal(syscall.SIGKILL) })
		}
		wg.Wait()
		for i := range nodes {
			errs = append(errs, d.node[i].kill())
		}
		if f.Kind == PowerLoss {
			for i, m := range d.mounts {
				if m == nil {
					errs = append(errs, fmt.Errorf("power loss needs Options.PowerLoss"))
					continue
				}
				lost, err := m.Cut()
				errs = append(errs, err)
				fmt.Fprintf(d.o.Log, "power cut n%d: dropped %d bytes not fsynced in %d file(s)\n", i, lost.Bytes, lost.Files)
				d.mu.Lock()
				d.lost.Bytes += lost.Bytes
				d.lost.Files += lost.Files
				d.mu.Unlock()
			}
		}
		return errors.Join(errs...)
	case KillStreamLeader, IsolateLeader:
		n, err := d.streamLeader(ctx, "KV_"+d.subj.ShardBucket(fmt.Sprint(f.Target)))
		if err != nil {
			return err
		}
		d.mu.Lock()
		d.aimed[f] = n
		d.mu.Unlock()
		if f.Kind == KillStreamLeader {
			return d.node[n].kill()
		}
		return d.partition(ctx, isolate(n), n)
	case PauseNode:
		return d.node[f.Target%nodes].signal(syscall.SIGSTOP)
	case IsolateNode:
		return d.partition(ctx, isolate(f.Target%nodes), f.Target%nodes)
	case Bridge:
		b := f.Target % nodes
		a, c := (b+1)%nodes, (b+2)%nodes
		return d.partition(ctx, [][2]int{pair(a, c)}, -1)
	}
	p, err := d.svc(f)
	if err != nil {
		return err
	}
	if f.Kind == PauseStorage {
		return p.signal(syscall.SIGSTOP)
	}
	return p.kill()
}

// Heal undoes f and returns once processes run again (they may still be
// catching up) or the routes are whole.
func (d *Deployment) Heal(ctx context.Context, f check.Fault) error {
	switch f.Kind {
	case KillNode:
		return d.restartNode(ctx, f.Target%nodes)
	case KillAllNodes, PowerLoss:
		var errs []error
		for i := range nodes {
			errs = append(errs, d.restartNode(ctx, i))
		}
		return errors.Join(errs...)
	case KillStreamLeader:
		d.mu.Lock()
		n, ok := d.aimed[f]
		delete(d.aimed, f)
		d.mu.Unlock()
		if !ok {
			return nil
		}
		return d.restartNode(ctx, n)
	case PauseNode:
		return d.node[f.Target%nodes].signal(syscall.SIGCONT)
	case IsolateNode, IsolateLeader, Bridge:
		d.mu.Lock()
		delete(d.aimed, f)
		d.mu.Unlock()
		return d.heal(ctx)
	}
	p, err := d.svc(f)
	if err != nil {
		return err
	}
	if f.Kind == PauseStorage {
		return p.signal(syscall.SIGCONT)
	}
	return p.start()
}

func (d *Deployment) svc(f check.Fault) (*proc, error) {
	kind := map[string]string{KillStorage: "storage", PauseStorage: "storage", KillRouter: "router", KillLocker: "locker"}[f.Kind]
	list := d.svcs[kind]
	if kind == "" || f.Target < 0 || f.Target >= len(list) {
		return nil, fmt.Errorf("unknown fault %s", f)
	}
	return list[f.Target], nil
}

func (d *Deployment) restartNode(ctx context.Context, i int) error {
	if err := d.node[i].start(); err != nil {
		return err
	}
	return waitPort(ctx, d.clientPort[i], 30*time.Second)
}

func pair(a, b int) [2]int { return [2]int{min(a, b), max(a, b)} }

func isolate(n int) [][2]int {
	var out [][2]int
	for j := range nodes {
		if j != n {
			out = append(out, pair(n, j))
		}
	}
	return out
}

// partition cuts the route pairs (both directions) and, when clientsOf is
// a node, its client connections, then waits until /routez shows exactly
// that shape.
func (d *Deployment) partition(ctx context.Context, pairs [][2]int, clientsOf int) error {
	d.mu.Lock()
	for _, pr := range pairs {
		d.cut[pr] = true
		d.routeProxies[[2]int{pr[0], pr[1]}].Cut(true)
		d.routeProxies[[2]int{pr[1], pr[0]}].Cut(true)
	}
	d.mu.Unlock()
	if clientsOf >= 0 {
		d.clientProxy[clientsOf].Cut(true)
	}
	return d.waitShape(ctx, 10*time.Second)
}

// heal lets every route and client connection back and waits until the
// cluster is fully routed again.
func (d *Deployment) heal(ctx context.Context) error {
	d.mu.Lock()
	d.cut = map[[2]int]bool{}
	for _, p := range d.routeProxies {
		p.Cut(false)
	}
	d.mu.Unlock()
	for _, p := range d.clientProxy {
		p.Cut(false)
	}
	return d.waitShape(ctx, 30*time.Second)
}

// Isolated returns the node whose routes are all cut now, or -1.
func (d *Deployment) Isolated() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for n := range nodes {
		all := true
		for _, pr := range isolate(n) {
			all = all && d.cut[pr]
		}
		if all {
			return n
		}
	}
	return -1
}

// routez is the part of a server's /routez the shape check reads.
type routez struct {
	Routes []struct {
		RemoteName string `json:"remote_name"`
		IP         string `json:"ip"`
		Port       int    `json:"port"`
	} `json:"routes"`
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func (d *Deployment) getJSON(i int, path string, v any) error {
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d%s", d.http[i], path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// checkShape compares every server's /routez with the cut: each pair not
// cut is routed, no cut pair is, and every route's remote address is one
// a proxy carries (none bypasses them).
func (d *Deployment) checkShape() error {
	d.mu.Lock()
	cut := map[[2]int]bool{}
	for k, v := range d.cut {
		cut[k] = v
	}
	carried := map[string]bool{}
	for _, p := range d.routeProxies {
		for _, a := range p.Addrs() {
			carried[a] = true
		}
	}
	d.mu.Unlock()
	var problems []string
	for i := range nodes {
		var rz routez
		if err := d.getJSON(i, "/routez", &rz); err != nil {
			return fmt.Errorf("n%d: %w", i, err)
		}
		peers := map[int]bool{}
		for _, r := range rz.Routes {
			var j int
			if _, err := fmt.Sscanf(r.RemoteName, "n%d", &j); err != nil || j < 0 || j >= nodes {
				problems = append(problems, fmt.Sprintf("n%d has a route to unnamed %q", i, r.RemoteName))
				continue
			}
			if addr := net.JoinHostPort(r.IP, fmt.Sprint(r.Port)); !carried[addr] {
				problems = append(problems, fmt.Sprintf("n%d route to n%d at %s bypasses the proxies", i, j, addr))
			}
			if cut[pair(i, j)] {
				problems = append(problems, fmt.Sprintf("n%d still routed to n%d across the cut", i, j))
			}
			peers[j] = true
		}
		for j := range nodes {
			if j != i && !cut[pair(i, j)] && !peers[j] {
				problems = append(problems, fmt.Sprintf("n%d has no route to n%d", i, j))
			}
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func (d *Deployment) waitShape(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := d.checkShape()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("routes not in shape after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitHealthy waits until every server's /healthz says JetStream is
// current (a meta leader, streams caught up).
func (d *Deployment) waitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := range nodes {
		for {
			var v map[string]any
			err := d.getJSON(i, "/healthz", &v)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("n%d not healthy after %s: %w", i, timeout, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// waitServices waits until every service instance answers a micro ping.
func (d *Deployment) waitServices(ctx context.Context, timeout time.Duration) error {
	nc, err := nats.Connect(d.proxyURLs(), nats.IgnoreDiscoveredServers())
	if err != nil {
		return err
	}
	defer nc.Close()
	want := map[string]int{"latchkey-storage": len(d.svcs["storage"]), "latchkey-router": 1, "latchkey-locker": 1}
	deadline := time.Now().Add(timeout)
	for name, n := range want {
		for {
			got := pingCount(nc, "$SRV.PING."+name)
			if got >= n {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d %s instances answer after %s (logs in %s)", got, n, name, timeout, filepath.Join(d.o.Dir, "logs"))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return nil
}

func pingCount(nc *nats.Conn, subj string) int {
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return 0
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		return 0
	}
	n := 0
	for {
		if _, err := sub.NextMsg(300 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}

// streamLeader asks the servers, one by one and directly, which node
// leads stream, waiting up to 10 s for an election in progress.
func (d *Deployment) streamLeader(ctx context.Context, stream string) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i := range nodes {
			msg, err := d.direct[i].Request("$JS.API.STREAM.INFO."+stream, nil, time.Second)
			if err != nil {
				continue
			}
			var info struct {
				Cluster struct {
					Leader string `json:"leader"`
				} `json:"cluster"`
			}
			var n int
			if json.Unmarshal(msg.Data, &info) == nil {
				if _, err := fmt.Sscanf(info.Cluster.Leader, "n%d", &n); err == nil && n >= 0 && n < nodes {
					return n, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("stream %s has no leader after 10s", stream)
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close kills every process and closes the proxies.
func (d *Deployment) Close() {
	d.mu.Lock()
	for _, nc := range d.clients {
		nc.Close()
	}
	for _, nc := range d.direct {
		if nc != nil {
			nc.Close()
		}
	}
	d.mu.Unlock()
	if d.planted != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = d.planted.Stop(ctx)
		cancel()
	}
	if d.plantNC != nil {
		d.plantNC.Close()
	}
	for _, kind := range []string{"locker", "router", "storage"} {
		for _, p := range d.svcs[kind] {
			p.close()
		}
	}
	for _, p := range d.node {
		if p != nil {
			p.close()
		}
	}
	for _, m := range d.mounts {
		if m != nil {
			_ = m.Unmount()
		}
	}
	for _, p := range d.routeProxies {
		p.Close()
	}
	for _, p := range d.clientProxy {
		if p != nil {
			p.Close()
		}
	}
	if d.sink != nil {
		d.sink.Close()
	}
}

func waitPort(ctx context.Context, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d not accepting after %s: %w", port, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PlantedLeaderGet is the stale read the services' quorum confirmation
// prevents, planted in the harness for the self-test (check.Unsafe.Get):
// it reads key as a raw leader read ($JS.API.STREAM.MSG.GET, last_by_subj)
// bypassing storage, from the node cut off from the others when there is
// one (a client on the minority side) and through node 0 otherwise. A
// deposed leader keeps answering such reads until its lost-quorum check,
// seconds after the majority has moved on.
func (d *Deployment) PlantedLeaderGet(ctx context.Context, key string) (string, uint64, bool, error) {
	ids := make([]string, d.o.Shards)
	for k := range ids {
		ids[k] = strconv.Itoa(k)
	}
	bucket := d.subj.ShardBucket(consistenthash.New(ids).Get(key))
	n := max(d.Isolated(), 0)
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	m, found, err := jskv.LeaderGet(ctx, d.direct[n], "KV_"+bucket, "$KV."+bucket+"."+jskv.EncodeKey(key))
	if err != nil {
		return "", 0, false, err
	}
	if !found || jskv.IsDeleteMarker(m.Header) {
		return "", 0, false, nil
	}
	return string(m.Data), m.Seq, true, nil
}

// Lost returns what the power cuts of this deployment dropped so far.
func (d *Deployment) Lost() powerloss.Lost {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lost
}
