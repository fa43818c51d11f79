package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/latchkey/latchkey/check/kvmodel"
	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/tests/suite"
)

// recorder collects a history with timestamps from one monotonic clock.
type recorder struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) add(client int, call int64, in kvmodel.Input, out kvmodel.Output) {
	ret := r.now()
	if out.Unknown {
		// The write may take effect any time later: its interval stays open.
		ret = 1 << 62
	}
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Call: call, Return: ret, Input: in, Output: out})
	r.mu.Unlock()
}

// outcome classifies an error: a 409 is definite, anything else leaves a
// write's effect unknown.
func outcome(err error) kvmodel.Output {
	if errors.Is(err, client.ErrConflict) {
		return kvmodel.Output{Conflict: true}
	}
	return kvmodel.Output{Unknown: true}
}

// runWorkload drives clients against keys until ctx ends or each client has
// done maxOps operations, and returns the history.
func runWorkload(ctx context.Context, t *testing.T, clients []*client.Client, keys []string, maxOps int, pace time.Duration, seed uint64) []porcupine.Operation {
	rec := &recorder{start: time.Now()}
	var wg sync.WaitGroup
	for id, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(id)))
			lastRev := map[string]uint64{}
			for n := 0; n < maxOps && ctx.Err() == nil; n++ {
				key := keys[rng.IntN(len(keys))]
				value := fmt.Sprintf("c%d-%d", id, n)
				opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
				call := rec.now()
				switch p := rng.IntN(100); {
				case p < 45:
					in := kvmodel.Input{Op: kvmodel.Get, Key: key}
					e, err := c.Get(opCtx, key)
					switch {
					case err == nil:
						lastRev[key] = e.Revision
						rec.add(id, call, in, kvmodel.Output{Found: true, Value: string(e.Value), Rev: e.Revision})
					case errors.Is(err, client.ErrNotFound):
						lastRev[key] = 0
						rec.add(id, call, in, kvmodel.Output{})
					default:
						rec.add(id, call, in, kvmodel.Output{Unknown: true})
					}
				case p < 70:
					in := kvmodel.Input{Op: kvmodel.Put, Key: key, Value: value}
					rev, err := c.Put(opCtx, key, []byte(value))
					if err != nil {
						rec.add(id, call, in, outcome(err))
					} else {
						rec.add(id, call, in, kvmodel.Output{Rev: rev})
					}
				case p < 90:
					exp := lastRev[key]
					in := kvmodel.Input{Op: kvmodel.CAS, Key: key, Value: value, Expected: exp}
					rev, err := c.Put(opCtx, key, []byte(value), client.IfRevision(exp))
					if err != nil {
						rec.add(id, call, in, outcome(err))
					} else {
						rec.add(id, call, in, kvmodel.Output{Rev: rev})
					}
				default:
					in := kvmodel.Input{Op: kvmodel.Del, Key: key}
					deleted, _, err := c.Delete(opCtx, key)
					if err != nil {
						rec.add(id, call, in, outcome(err))
					} else {
						rec.add(id, call, in, kvmodel.Output{Found: deleted})
					}
				}
				cancel()
				time.Sleep(pace)
			}
		}()
	}
	wg.Wait()
	return rec.ops
}

// checkLinearizable fails the test on a violation and writes porcupine's
// visualisation next to the test's temp files.
func checkLinearizable(t *testing.T, h []porcupine.Operation) {
	t.Helper()
	var unknown, conflict int
	for _, op := range h {
		out := op.Output.(kvmodel.Output)
		if out.Unknown {
			unknown++
		}
		if out.Conflict {
			conflict++
		}
	}
	t.Logf("history: %d operations, %d unknown outcomes, %d conflicts", len(h), unknown, conflict)
	model := kvmodel.Model()
	res, info := porcupine.CheckOperationsVerbose(model, h, 2*time.Minute)
	switch res {
	case porcupine.Ok:
		t.Logf("%d operations: linearizable", len(h))
	case porcupine.Unknown:
		t.Fatalf("%d operations: the checker timed out", len(h))
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("latchkey-%s.html", t.Name()))
		if err := porcupine.VisualizePath(model, info, path); err == nil {
			t.Logf("visualisation: %s", path)
		}
		t.Fatalf("%d operations: NOT linearizable", len(h))
	}
}

// TestLinearizableOnCluster records concurrent gets, puts, CAS puts and
// deletes over a few keys against a three-node JetStream cluster (R3 shard
// buckets), with clients connected to different nodes, and checks the
// history with porcupine.
func TestLinearizableOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.NewCluster(t)
	svcConn := natstest.Connect(t, c.URLs())
	suite.New(t, svcConn, suite.Options{Shards: 3, Replicas: 3})

	var clients []*client.Client
	for i := 0; i < 8; i++ {
		nc := natstest.Connect(t, c.Nodes[i%3].ClientURL())
		clients = append(clients, client.New(nc))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	h := runWorkload(ctx, t, clients, []string{"a", "b.c", "d e", "f>*"}, 250, 0, 1)
	checkLinearizable(t, h)
}

// TestLinearizableThroughNodeLoss does the same while the node leading one
// shard's stream is shut down and brought back mid-run.
func TestLinearizableThroughNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.NewCluster(t)
	svcConn := natstest.Connect(t, c.URLs())
	suite.New(t, svcConn, suite.Options{Shards: 3, Replicas: 3})

	var clients []*client.Client
	for i := 0; i < 6; i++ {
		clients = append(clients, client.New(natstest.Connect(t, c.URLs())))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	defer cancel()
	faultDone := make(chan struct{})
	go func() {
		defer close(faultDone)
		time.Sleep(2 * time.Second)
		leader := c.StreamLeader("KV_latchkey_shard_0")
		if leader < 0 {
			t.Error("no leader for shard 0's stream: the fault was not injected")
			return
		}
		t.Logf("killing node %d, the leader of shard 0's stream", leader)
		c.Kill(leader)
		time.Sleep(3 * time.Second)
		if err := c.Restart(leader); err != nil {
			t.Errorf("restart node %d: %v", leader, err)
		}
	}()
	// Paced so the history spans the fault: before, during and after.
	h := runWorkload(ctx, t, clients, []string{"a", "b", "c"}, 100000, 5*time.Millisecond, 2)
	<-faultDone
	checkLinearizable(t, h)
}
