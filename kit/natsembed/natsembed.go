// Package natsembed starts real NATS servers with JetStream inside the
// process: one server, or a three-node cluster whose nodes can be shut down
// and restarted to inject faults. `latchkey dev`, the benchmarks, the
// in-process checker and (through kit/natstest) the tests embed it; it
// links no test code.
package natsembed

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/tcpproxy"
	"github.com/nats-io/nats-server/v2/server"
)

// Options configures an embedded server.
type Options struct {
	Host     string // default 127.0.0.1
	Port     int    // 0 picks a free port
	StoreDir string // JetStream data; required
	Name     string
	// SyncAlways fsyncs every write: nothing acknowledged is lost on a crash.
	SyncAlways bool
	// Users, when set, turns on user authentication (with per-user
	// permissions); NoAuthUser is the user of clients that bring no
	// credentials. latchkey dev uses them to give the watch event
	// connection a user that may publish only to _INBOX.>.
	Users      []*server.User
	NoAuthUser string
}

// Start runs one JetStream-enabled server and waits until it accepts clients.
func Start(o Options) (*server.Server, error) {
	so := ServerOptions(o)
	return run(so)
}

// ServerOptions are the server options Start runs with, for callers that
// add to them (clustering through proxies, say) before starting.
func ServerOptions(o Options) *server.Options {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	so := &server.Options{
		ServerName: o.Name,
		Host:       o.Host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		MaxPayload: 1 << 20,
	}
	if o.SyncAlways {
		so.SyncAlways = true
	}
	so.Users, so.NoAuthUser = o.Users, o.NoAuthUser
	return so
}

func run(so *server.Options) (*server.Server, error) {
	s, err := server.NewServer(so)
	if err != nil {
		return nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats server %s not ready in 15s", so.ServerName)
	}
	return s, nil
}

// Cluster is a three-node JetStream cluster on loopback.
type Cluster struct {
	Nodes []*server.Server
	opts  []*server.Options
}

// ClusterOptions configures StartClusterWith.
type ClusterOptions struct {
	// SyncAlways sets sync_interval always on every node (each node
	// fsyncs before it acknowledges a replicated write).
	SyncAlways bool
}

// StartCluster starts n clustered servers whose data lives under dir, with
// the default sync interval.
func StartCluster(n int, dir string) (*Cluster, error) {
	return StartClusterWith(n, dir, ClusterOptions{})
}

// StartClusterWith starts n clustered servers whose data lives under dir.
//
// The route ports are picked free before the servers bind them, so another
// process may take one in between; a node that cannot bind never becomes
// ready (CI saw "cluster node n0 not ready" once). A start that fails so
// is retried on fresh ports and a fresh directory, twice.
func StartClusterWith(n int, dir string, o ClusterOptions) (*Cluster, error) {
	var err error
	for attempt := range 3 {
		sub := dir
		if attempt > 0 {
			sub = fmt.Sprintf("%s/retry%d", dir, attempt)
		}
		var c *Cluster
		if c, err = startCluster(n, sub, o); err == nil {
			return c, nil
		}
	}
	return nil, err
}

func startCluster(n int, dir string, o ClusterOptions) (*Cluster, error) {
	ports := make([]int, n)
	for i := range ports {
		p, err := tcpproxy.FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	routes := make([]string, n)
	for i, p := range ports {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", p)
	}
	c := &Cluster{}
	for i := 0; i < n; i++ {
		so := ServerOptions(Options{StoreDir: fmt.Sprintf("%s/n%d", dir, i), Name: fmt.Sprintf("n%d", i), SyncAlways: o.SyncAlways})
		so.Cluster = server.ClusterOpts{Name: "latchkey", Host: "127.0.0.1", Port: ports[i]}
		so.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		c.opts = append(c.opts, so)
	}
	for _, so := range c.opts {
		s, err := server.NewServer(so)
		if err != nil {
			c.Shutdown()
			return nil, err
		}
		go s.Start()
		c.Nodes = append(c.Nodes, s)
	}
	for i, s := range c.Nodes {
		if !s.ReadyForConnections(15 * time.Second) {
			c.Shutdown()
			for _, s := range c.Nodes {
				s.WaitForShutdown()
			}
			return nil, fmt.Errorf("cluster node %s not ready", s.Name())
		}
		// Pin the port the node got, so Restart brings it back where
		// clients will reconnect.
		c.opts[i].Port = s.Addr().(*net.TCPAddr).Port
	}
	if err := c.waitJetStream(30 * time.Second); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) waitJetStream(d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, s := range c.Nodes {
			if s.Running() && s.JetStreamIsLeader() {
				return nil
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("no JetStream meta leader after %s", d)
}

// URLs returns a comma-separated client URL list of the running nodes.
func (c *Cluster) URLs() string {
	var urls []string
	for _, s := range c.Nodes {
		if s.Running() {
			urls = append(urls, s.ClientURL())
		}
	}
	return strings.Join(urls, ",")
}

// Kill shuts node i down (its data stays on disk).
func (c *Cluster) Kill(i int) {
	c.Nodes[i].Shutdown()
	c.Nodes[i].WaitForShutdown()
}

// Restart starts node i again on the same ports and data.
func (c *Cluster) Restart(i int) error {
	s, err := run(c.opts[i].Clone())
	if err != nil {
		return err
	}
	c.Nodes[i] = s
	return nil
}

// StreamLeader returns the index of the node leading stream in the global
// account, or -1.
func (c *Cluster) StreamLeader(stream string) int {
	for i, s := range c.Nodes {
		if s.Running() && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for _, s := range c.Nodes {
		s.Shutdown()
	}
}
