package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/natsembed"
	"github.com/latchkey/latchkey/suite"
	"github.com/nats-io/nats.go"
)

// clusterDeployment is a 3-node embedded NATS cluster with the services
// (storage serving every shard, router, locker) on node 0's in-process
// connection, as the single-server deployment runs them: only the NATS
// topology and the replicas change, so the two are compared like for
// like. Clients on nodes 1 and 2 reach the services over a route, as
// etcd clients on followers reach the leader.
//
// Not one set of services per node: storage instances of one shard on
// different nodes race each other's writes on a hot key, and a put
// refused for a concurrent write JetStream may have stored anyway is
// answered "outcome unknown" (services/storage write.go), which a
// zipfian put workload hits within seconds.
type clusterDeployment struct {
	cluster  *natsembed.Cluster
	services *suite.Services
	conns    []*nats.Conn // the services' connection and event connection
}

// startClusterDeployment starts the cluster of cfg (cfg.Nodes = 3) with R3
// buckets.
func startClusterDeployment(ctx context.Context, cfg DeploymentConfig) (d *Deployment, err error) {
	c, err := natsembed.StartClusterWith(cfg.Nodes, cfg.Dir, natsembed.ClusterOptions{SyncAlways: cfg.SyncAlways})
	if err != nil {
		return nil, fmt.Errorf("starting a %d-node NATS cluster: %w", cfg.Nodes, err)
	}
	cd := &clusterDeployment{cluster: c}
	defer func() {
		if err != nil {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			defer cancel()
			cd.stop(stopCtx)
		}
	}()
	o := suite.Options{Prefix: cfg.Prefix, Shards: cfg.Shards, Replicas: 3, Logger: cfg.Logger}
	var urls []string
	for _, node := range c.Nodes {
		urls = append(urls, node.ClientURL())
	}
	node := c.Nodes[0]
	for _, name := range []string{"latchkey-bench", "latchkey-bench-watch-events"} {
		nc, err := nats.Connect(node.ClientURL(), nats.InProcessServer(node), nats.Name(name), nats.MaxReconnects(-1))
		if err != nil {
			return nil, fmt.Errorf("connecting to node 0: %w", err)
		}
		cd.conns = append(cd.conns, nc)
	}
	// A cluster just formed may not place an R3 bucket at once (no meta
	// leader yet, peers not current): retry the start a while.
	for attempt := 0; ; attempt++ {
		if cd.services, err = suite.StartServices(ctx, cd.conns[0], cd.conns[1], o); err == nil || attempt == 40 || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("services on the cluster: %w", err)
	}
	d = &Deployment{Server: c.Nodes[0], URL: strings.Join(urls, ","), Durability: DurabilityJSClusterDefault, Replicas: 3,
		ServiceConn: cd.conns[0], cluster: cd}
	if cfg.SyncAlways {
		d.Durability = DurabilityJSClusterAlways
	}
	return d, nil
}

// stop stops the services, then their connections, then the cluster.
func (cd *clusterDeployment) stop(ctx context.Context) {
	if cd.services != nil {
		_ = cd.services.Stop(ctx) // Services.Stop logs what failed
	}
	for _, nc := range cd.conns {
		nc.Close()
	}
	cd.cluster.Shutdown()
	for _, s := range cd.cluster.Nodes {
		s.WaitForShutdown()
	}
}
