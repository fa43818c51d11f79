package natstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natsembed"
	"github.com/latchkey/latchkey/kit/tcpproxy"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// PartitionOptions configures StartPartitionable.
type PartitionOptions struct {
	// Nodes is the cluster size; 0 = 3.
	Nodes int
	// PoolSize is the route pool size per server pair (Cluster.PoolSize):
	// 0 = the server's default (3 connections per pair), -1 = no pooling,
	// one connection per pair. The proxies carry any number of connections.
	PoolSize int
	// SyncAlways fsyncs every write.
	SyncAlways bool
}

// PartitionCluster is a JetStream cluster on loopback whose route
// connections all run through TCP proxies owned by the test, one proxy per
// directed server pair (server i dials j through proxy i->j). Cut(i)
// closes every proxied route connection of server i and refuses new ones,
// so i is alone while its client port keeps working: clients connected to
// it still talk to it, and it still answers what it believes it owns (a
// stream leader it was keeps answering STREAM.MSG.GET until its lost-quorum
// check fires, up to ~20 s later). Heal(i) lets the routes back.
//
// Route gossip cannot bypass the proxies: every server advertises its
// cluster address as a sink that accepts and closes (Cluster.Advertise), so
// an implicit route learned by gossip never connects; and Cluster.NoAdvertise
// keeps servers from telling clients about the other servers' client URLs.
// StartPartitionable, Cut and Heal check via Routez that each route
// connection is one the proxies carry.
//
// Call Cut and Heal from the test goroutine: they fail the test when the
// cluster does not reach the expected shape in time.
type PartitionCluster struct {
	// Nodes are the servers, named n0, n1, ... in order.
	Nodes []*server.Server

	t       testing.TB
	sink    net.Listener
	proxies map[[2]int]*tcpproxy.Proxy // [from, to]
}

// StartPartitionable starts a JetStream cluster whose routes run through
// cuttable proxies, waits until every pair is routed through them and a
// meta leader is elected, and shuts it all down at cleanup.
func StartPartitionable(t testing.TB, o PartitionOptions) *PartitionCluster {
	t.Helper()
	n := o.Nodes
	if n == 0 {
		n = 3
	}
	c := &PartitionCluster{t: t, proxies: map[[2]int]*tcpproxy.Proxy{}}
	t.Cleanup(c.shutdown)
	var err error
	if c.sink, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go tcpproxy.Sink(c.sink)
	for i := range n {
		for j := range n {
			if i == j {
				continue
			}
			p, err := tcpproxy.New()
			if err != nil {
				t.Fatal(err)
			}
			c.proxies[[2]int{i, j}] = p
		}
	}
	dir := t.TempDir()
	for i := range n {
		so := natsembed.ServerOptions(Options{StoreDir: fmt.Sprintf("%s/n%d", dir, i), Name: fmt.Sprintf("n%d", i), SyncAlways: o.SyncAlways})
		so.Cluster = server.ClusterOpts{
			Name:        "latchkey-partitionable",
			Host:        "127.0.0.1",
			Port:        server.RANDOM_PORT,
			Advertise:   c.sink.Addr().String(),
			NoAdvertise: true,
			PoolSize:    o.PoolSize,
		}
		var routes []*url.URL
		for j := range n {
			if j != i {
				routes = append(routes, &url.URL{Scheme: "nats-route", Host: c.proxies[[2]int{i, j}].Addr()})
			}
		}
		so.Routes = routes
		s, err := server.NewServer(so)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		c.Nodes = append(c.Nodes, s)
	}
	for i, s := range c.Nodes {
		if !s.ReadyForConnections(15 * time.Second) {
			t.Fatalf("node %d not ready in 15s", i)
		}
	}
	// The cluster ports are known only now; proxies hold early dials
	// until their target is set.
	for k, p := range c.proxies {
		p.SetTarget(c.Nodes[k[1]].ClusterAddr().String())
	}
	if err := c.waitShape(nil, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.hasMetaLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no JetStream meta leader in 30s")
		}
		time.Sleep(25 * time.Millisecond)
	}
	return c
}

// ClientURL returns the client URL of node i alone.
func (c *PartitionCluster) ClientURL(i int) string { return c.Nodes[i].ClientURL() }

// URLs returns the client URLs of nodes, comma-separated, for a connection
// that may use any of them (and only them).
func (c *PartitionCluster) URLs(nodes ...int) string {
	var us []string
	for _, i := range nodes {
		us = append(us, c.ClientURL(i))
	}
	return strings.Join(us, ",")
}

// Connect opens a client connection to the given nodes only (it ignores
// servers it might learn of), closed at cleanup.
func (c *PartitionCluster) Connect(t testing.TB, nodes []int, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return Connect(t, c.URLs(nodes...), append([]nats.Option{nats.IgnoreDiscoveredServers()}, opts...)...)
}

// Cut isolates node i: it closes every proxied route connection between i
// and the other nodes and refuses new ones, then waits until no server has
// a route across the cut (failing the test after 10 s).
func (c *PartitionCluster) Cut(i int) {
	c.t.Helper()
	for k, p := range c.proxies {
		if k[0] == i || k[1] == i {
			p.Cut(true)
		}
	}
	if err := c.waitShape(map[int]bool{i: true}, 10*time.Second); err != nil {
		c.t.Fatalf("cut node %d: %v", i, err)
	}
}

// Heal undoes Cut(i) and waits until every pair of nodes is routed again
// (failing the test after 30 s).
func (c *PartitionCluster) Heal(i int) {
	c.t.Helper()
	for k, p := range c.proxies {
		if k[0] == i || k[1] == i {
			p.Cut(false)
		}
	}
	if err := c.waitShape(nil, 30*time.Second); err != nil {
		c.t.Fatalf("heal node %d: %v", i, err)
	}
}

// NumRoutes returns how many route connections node i has (pooled routes
// count each connection).
func (c *PartitionCluster) NumRoutes(i int) int { return c.Nodes[i].NumRoutes() }

// ClaimsStreamLeader says whether node i itself believes it leads stream
// (in the global account), asked of that server directly: a node cut off
// from its peers keeps this belief until its lost-quorum check.
func (c *PartitionCluster) ClaimsStreamLeader(i int, stream string) bool {
	return c.Nodes[i].JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream)
}

// StreamLeader returns the lowest-numbered node among nodes (all nodes when
// none are given) that believes it leads stream, or -1. During a cut two
// nodes may believe it; pass the nodes of one side to ask that side.
func (c *PartitionCluster) StreamLeader(stream string, nodes ...int) int {
	if len(nodes) == 0 {
		for i := range c.Nodes {
			nodes = append(nodes, i)
		}
	}
	for _, i := range nodes {
		if c.ClaimsStreamLeader(i, stream) {
			return i
		}
	}
	return -1
}

// MetaLeader returns the index of a node that believes it is the
// JetStream meta leader, or -1.
func (c *PartitionCluster) MetaLeader() int {
	for i, s := range c.Nodes {
		if s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// MoveStreamLeader makes node to lead stream (a leader stepdown with that
// node preferred) and waits until it does, failing the test after 20 s.
//
// Tests of a deposed leader put the stream leader on the meta leader: a
// cut node that is only a meta follower refuses STREAM.MSG.GET as soon as
// its meta group turns leaderless (its election timeout, 4-9 s), while a
// cut meta leader keeps answering as stream leader until its lost-quorum
// check, 10-20 s after the cut. That is the widest window for the hazard.
func (c *PartitionCluster) MoveStreamLeader(stream string, to int) {
	c.t.Helper()
	nc, err := nats.Connect(c.ClientURL(to), nats.IgnoreDiscoveredServers())
	if err != nil {
		c.t.Fatal(err)
	}
	defer nc.Close()
	req, _ := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: c.Nodes[to].Name()}})
	deadline := time.Now().Add(20 * time.Second)
	for !c.ClaimsStreamLeader(to, stream) || c.StreamLeader(stream, c.Others(to)...) >= 0 {
		if time.Now().After(deadline) {
			c.t.Fatalf("n%d does not lead %s after 20s", to, stream)
		}
		if c.StreamLeader(stream) >= 0 && !c.ClaimsStreamLeader(to, stream) {
			// Errors are retried: a stepdown right after another one is
			// refused while the group settles.
			_, _ = nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 2*time.Second)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Others returns every node index but i, in order: the majority side of
// Cut(i) in a three-node cluster.
func (c *PartitionCluster) Others(i int) []int {
	var o []int
	for j := range c.Nodes {
		if j != i {
			o = append(o, j)
		}
	}
	return o
}

func (c *PartitionCluster) hasMetaLeader() bool {
	for _, s := range c.Nodes {
		if s.JetStreamIsLeader() {
			return true
		}
	}
	return false
}

// waitShape waits until every pair of nodes outside cut is routed, no
// route crosses the cut (a node in cut has none at all), and every route
// connection either server reports is one a proxy carries.
func (c *PartitionCluster) waitShape(cut map[int]bool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := c.checkShape(cut)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", d, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (c *PartitionCluster) checkShape(cut map[int]bool) error {
	byName := map[string]int{}
	for i, s := range c.Nodes {
		byName[s.Name()] = i
	}
	carried := map[string]bool{} // remote addresses a proxied route may show
	for _, p := range c.proxies {
		for _, a := range p.Addrs() {
			carried[a] = true
		}
	}
	var problems []string
	for i, s := range c.Nodes {
		rz, err := s.Routez(nil)
		if err != nil {
			return err
		}
		peers := map[int]bool{}
		for _, r := range rz.Routes {
			j, ok := byName[r.RemoteName]
			if !ok {
				// Not yet identified; look again shortly.
				problems = append(problems, fmt.Sprintf("n%d has a route to unnamed %q", i, r.RemoteName))
				continue
			}
			if addr := net.JoinHostPort(r.IP, fmt.Sprint(r.Port)); !carried[addr] {
				problems = append(problems, fmt.Sprintf("n%d route to n%d at %s bypasses the proxies", i, j, addr))
			}
			if cut[i] || cut[j] {
				problems = append(problems, fmt.Sprintf("n%d still routed to n%d across the cut", i, j))
			}
			peers[j] = true
		}
		for j := range c.Nodes {
			if j != i && !cut[i] && !cut[j] && !peers[j] {
				problems = append(problems, fmt.Sprintf("n%d has no route to n%d", i, j))
			}
		}
		if cut[i] && len(rz.Routes) != 0 {
			problems = append(problems, fmt.Sprintf("isolated n%d still has %d routes", i, len(rz.Routes)))
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func (c *PartitionCluster) shutdown() {
	for _, s := range c.Nodes {
		s.Shutdown()
	}
	for _, s := range c.Nodes {
		s.WaitForShutdown()
	}
	for _, p := range c.proxies {
		p.Close()
	}
	if c.sink != nil {
		c.sink.Close()
	}
}
