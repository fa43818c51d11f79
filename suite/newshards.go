package suite

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
)

// ServeNewShards follows the deployment's shard map and starts a storage
// instance for every shard id the map or a running move names that no
// instance of d serves yet, so `latchkey shards set 0,1,2,3` works on
// `latchkey dev` alone: a move waits (shard_unserved) until its new shards
// are served. The returned stop ends the following and stops what it
// started.
func (d *Deployment) ServeNewShards(ctx context.Context) (stop func()) {
	o := d.opts
	ctx, cancel := context.WithCancel(ctx)
	var (
		mu      sync.Mutex
		servers []*storage.Server
		done    = make(chan struct{})
	)
	served := map[string]bool{}
	for _, id := range ShardIDs(max(o.Shards, o.StorageShards)) {
		served[id] = true
	}
	get := subjects.New(o.Prefix).Public("admin.shards.get")
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			cur := &pb.ShardsGetResponse{}
			err := service.Call(cctx, d.Conn, get, nil, &pb.ShardsGetRequest{}, cur)
			ccancel()
			if err != nil {
				continue
			}
			var missing []string
			for _, id := range append(slices.Clone(cur.Shards), cur.Move.GetToShards()...) {
				if !served[id] {
					served[id] = true
					missing = append(missing, id)
				}
			}
			if len(missing) == 0 {
				continue
			}
			log := o.Logger.With("component", "storage", "shards", missing)
			log.Info("starting storage for new shards")
			sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
			st, err := storage.Start(sctx, d.Conn, storage.Config{Prefix: o.Prefix, Shards: missing, Replicas: o.Replicas,
				EventConn: d.Events, Logger: log, Unsafe: o.StorageUnsafe})
			scancel()
			if err != nil {
				log.Error("cannot start storage for new shards", "err", err)
				for _, id := range missing {
					delete(served, id)
				}
				continue
			}
			mu.Lock()
			servers = append(servers, st)
			mu.Unlock()
		}
	}()
	return func() {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, st := range servers {
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = st.Stop(sctx)
			scancel()
		}
	}
}
