package tests

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/latchkey/latchkey/check/kvmodel"
	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	gproto "google.golang.org/protobuf/proto"
)

// TestLinearizableThroughReshard runs the porcupine workload (gets, puts,
// CAS, deletes) against a three-node cluster while the shard set goes
// 3 -> 4 -> 3, with a NATS server killed and restarted during the first
// move and the router driving the second move cut off mid-move (its
// connection closed, its lease left to lapse) and replaced by another
// router that resumes. The history must be linearizable, every revision
// must be at least every revision acknowledged before its operation
// began, and 3000 preloaded keys must all be there after. About 40 s.
func TestLinearizableThroughReshard(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.NewCluster(t)
	quiet := slog.New(slog.DiscardHandler)
	// The routers' own account of the moves, shown when the test fails.
	var logBuf syncBuffer
	moverLog := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("router log:\n%s", logBuf.String())
		}
	})
	set := subjects.New("")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	svc := natstest.Connect(t, c.URLs())
	st, err := storage.Start(ctx, svc, storage.Config{Shards: []string{"0", "1", "2", "3"}, Replicas: 3, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Stop(context.Background()) })
	startRouter := func(nc *nats.Conn, shards int, noMover bool) *router.Server {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := router.Start(ctx, nc, router.Config{Shards: shards, Replicas: 3, Logger: moverLog, NoMover: noMover, MoverLease: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Stop(context.Background()) })
		return r
	}
	startRouter(natstest.Connect(t, c.URLs()), 3, true) // serves, never drives
	moverConn, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	startRouter(moverConn, 3, false)

	admin := natstest.Connect(t, c.URLs())
	adminCall := func(endpoint string, req, resp gproto.Message) error {
		actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return service.Call(actx, admin, set.Public(endpoint), nil, req, resp)
	}
	// Preload: enough keys that a move lasts through its faults.
	const preload = 3000
	loader := client.New(natstest.Connect(t, c.URLs()))
	var lwg sync.WaitGroup
	for w := range 16 {
		lwg.Go(func() {
			for i := w; i < preload; i += 16 {
				for {
					pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
					_, err := loader.Put(pctx, fmt.Sprintf("pre%d", i), []byte(fmt.Sprint(i)))
					pcancel()
					if err == nil || ctx.Err() != nil {
						break
					}
				}
			}
		})
	}
	lwg.Wait()

	var clients []*client.Client
	for i := range 6 {
		clients = append(clients, client.New(natstest.Connect(t, c.Nodes[i%3].ClientURL())))
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer wcancel()
	var history []porcupine.Operation
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		history = runWorkload(wctx, t, clients, []string{"a", "b", "c", "d", "e", "f", "g", "h"}, 1<<30, 3*time.Millisecond, 12)
	}()

	// move sets the shard set and calls fault once the move has handed
	// over keys (the mover's own progress report), then waits for DONE.
	move := func(shards []string, fault func()) {
		t.Helper()
		var cur pb.ShardsGetResponse
		for adminCall(router.AdminShardsGet, &pb.ShardsGetRequest{}, &cur) != nil {
			time.Sleep(100 * time.Millisecond)
		}
		var resp pb.ShardsSetResponse
		if err := adminCall(router.AdminShardsSet, &pb.ShardsSetRequest{Shards: shards, ExpectedEpoch: cur.Epoch}, &resp); err != nil {
			t.Fatalf("set %v: %v", shards, err)
		}
		faulted := false
		deadline := time.Now().Add(90 * time.Second)
		for {
			var got pb.ShardsGetResponse
			if err := adminCall(router.AdminShardsGet, &pb.ShardsGetRequest{}, &got); err == nil {
				if !faulted && (got.Move.GetKeysMoved() > 0 || got.Move.GetState() != pb.MoveState_MOVE_STATE_COPYING) {
					t.Logf("move to %v: %d of ~%d keys handed over (%v); fault", shards, got.Move.GetKeysMoved(), got.Move.GetKeysTotal(), got.Move.GetState())
					if got.Move.GetState() == pb.MoveState_MOVE_STATE_DONE {
						t.Error("the move finished before its fault: the fault hit no running move")
					}
					faulted = true
					fault()
				}
				if got.Epoch == resp.Epoch && got.Move.GetState() == pb.MoveState_MOVE_STATE_DONE {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("move to %v not done in time", shards)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(time.Second)
	move([]string{"0", "1", "2", "3"}, func() {
		node := c.StreamLeader("KV_latchkey_shard_3")
		if node < 0 {
			node = 0
		}
		t.Logf("killing node %d (shard 3's stream leader) mid-move", node)
		c.Kill(node)
		go func() {
			time.Sleep(2 * time.Second)
			if err := c.Restart(node); err != nil {
				t.Errorf("restart node %d: %v", node, err)
			}
		}()
	})
	time.Sleep(3 * time.Second) // the restarted node rejoins before the next fault
	move([]string{"0", "1", "2"}, func() {
		t.Log("cutting off the driving router mid-move; a new one takes over")
		moverConn.Close()
		startRouter(natstest.Connect(t, c.URLs()), 0, false) // the map as it is, mid-move
	})
	time.Sleep(time.Second)
	wcancel()
	<-workDone

	checkLinearizable(t, history)
	checkRevisionsNeverDecrease(t, history)
	for i := range preload {
		key := fmt.Sprintf("pre%d", i)
		gctx, gcancel := context.WithTimeout(context.Background(), 5*time.Second)
		e, err := loader.Get(gctx, key)
		gcancel()
		if err != nil || string(e.Value) != fmt.Sprint(i) {
			t.Fatalf("preloaded %s after the moves: %v %v", key, e, err)
		}
	}
}

// checkRevisionsNeverDecrease: an operation that returned a revision
// returned one at least as high as every revision acknowledged (on the same
// key) before it was called.
func checkRevisionsNeverDecrease(t *testing.T, h []porcupine.Operation) {
	t.Helper()
	type done struct {
		ret int64
		rev uint64
	}
	byKey := map[string][]done{}
	for _, op := range h {
		out := op.Output.(kvmodel.Output)
		if out.Rev > 0 && !out.Unknown {
			k := op.Input.(kvmodel.Input).Key
			byKey[k] = append(byKey[k], done{op.Return, out.Rev})
		}
	}
	for k, ds := range byKey {
		sort.Slice(ds, func(i, j int) bool { return ds[i].ret < ds[j].ret })
		byKey[k] = ds
	}
	for _, op := range h {
		out := op.Output.(kvmodel.Output)
		if out.Rev == 0 || out.Unknown {
			continue
		}
		k := op.Input.(kvmodel.Input).Key
		for _, d := range byKey[k] {
			if d.ret >= op.Call {
				break
			}
			if d.rev > out.Rev {
				t.Fatalf("key %s: revision %d returned after revision %d was acknowledged", k, out.Rev, d.rev)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
