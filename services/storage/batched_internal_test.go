package storage

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
)

// TestBusyShardReadsBehindBarrier drives concurrent writers that each read
// their own acknowledged write back at once. The busy shard answers some of
// those linearizable gets from its view behind a shared barrier; every one
// must still see the write acknowledged before it (read-your-writes is the
// part of linearizability a lagging view would break first).
func TestBusyShardReadsBehindBarrier(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Start(ctx, nc, Config{Shards: []string{"0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	subj := subjects.New("")

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := natstest.Connect(t, srv.ClientURL())
			key := fmt.Sprintf("k%d", w%4) // writers share keys: reads race writes
			for i := 0; i < 150; i++ {
				val := []byte(fmt.Sprintf("%d-%d", w, i))
				put := &pb.PutResponse{}
				if err := service.Call(ctx, cl, subj.Shard("0", "put"), nil, &pb.PutRequest{Key: key, Value: val}, put); err != nil {
					errs <- err
					return
				}
				got := &pb.GetResponse{}
				if err := service.Call(ctx, cl, subj.Shard("0", "get"), nil, &pb.GetRequest{Key: key}, got); err != nil {
					errs <- err
					return
				}
				if !got.Found || got.Revision < put.Revision {
					errs <- fmt.Errorf("get after put at revision %d saw revision %d (found %v)", put.Revision, got.Revision, got.Found)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := s.shards[0].batchedReads.Load()
	t.Logf("%d of 2400 linearizable gets answered behind a shared barrier", n)
	if n == 0 {
		t.Fatal("no get took the batched path under 16 concurrent clients")
	}
}

// An idle view that falls behind a fresh acknowledgement is not lagging
// yet (its last progress is old, but it has only just been behind); it is
// once it stays behind for lagTolerance, and stops being when it catches up.
func TestLaggingCountsFromWhenTheViewFellBehind(t *testing.T) {
	sh := &shard{view: newView()}
	sh.view.apply("k", true, 10, revInfo{}, false, false, false, false, 0, true, []byte("v"), "")
	sh.noteAcked(10)
	time.Sleep(lagTolerance + 50*time.Millisecond) // idle: progress is old now
	sh.noteAcked(11)
	if sh.lagging() {
		t.Fatal("a view idle for long reported lagging the moment a new write was acknowledged")
	}
	time.Sleep(lagTolerance + 50*time.Millisecond)
	if !sh.lagging() {
		t.Fatal("a view behind an acknowledged write for longer than lagTolerance is not lagging")
	}
	sh.view.apply("k", true, 11, revInfo{}, false, false, false, false, 0, true, []byte("w"), "")
	if sh.lagging() {
		t.Fatal("a view that caught up still lags")
	}
}
