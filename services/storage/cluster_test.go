package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
)

// TestClusterLeaderFailover writes from several goroutines through a shard
// replicated three ways, kills the stream leader mid-traffic, and checks
// that every acknowledged put is readable afterwards and that service
// resumes.
func TestClusterLeaderFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	t00 := time.Now()
	c := natstest.NewCluster(t)
	t.Logf("cluster up in %s", time.Since(t00))
	nc := natstest.Connect(t, c.URLs())
	startOn(t, nc, storage.Config{Shards: []string{"0"}, Replicas: 3})
	t.Logf("storage up in %s", time.Since(t00))
	stream := "KV_" + subj.ShardBucket("0")

	const writers = 8
	var (
		mu      sync.Mutex
		acked   = map[string]uint64{} // key -> highest acknowledged revision
		values  = map[string]string{}
		okCount atomic.Int64
		errs    atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cnc := natstest.Connect(t, c.URLs())
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d-k%d", w, i%20)
				val := fmt.Sprintf("%d-%d", w, i)
				var resp pb.PutResponse
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				err := storageCall(ctx, cnc, "put", &pb.PutRequest{Key: key, Value: []byte(val)}, &resp)
				cancel()
				if err != nil {
					if !errors.Is(err, apierr.ErrUnavailable) {
						t.Errorf("put during failover: %v (want success or 503)", err)
						return
					}
					errs.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				okCount.Add(1)
				mu.Lock()
				if resp.Revision > acked[key] {
					acked[key], values[key] = resp.Revision, val
				}
				mu.Unlock()
			}
		}()
	}
	eventually(t, 10*time.Second, "traffic before the kill", func() bool { return okCount.Load() > 200 })
	t.Logf("traffic flowing at %s", time.Since(t00))
	leader := c.StreamLeader(stream)
	if leader < 0 {
		t.Fatal("no stream leader")
	}
	t0 := time.Now()
	c.Kill(leader)
	t.Logf("killed node %d in %s after %d puts", leader, time.Since(t0), okCount.Load())
	before := okCount.Load()
	eventually(t, 30*time.Second, "writes after the kill", func() bool { return okCount.Load() > before+200 })
	t.Logf("resumed %s after the kill", time.Since(t0))
	close(stop)
	wg.Wait()
	t.Logf("acknowledged puts %d, 503s %d", okCount.Load(), errs.Load())

	// Every key reads back at (at least) its last acknowledged revision,
	// and a scan of the shard sees them all.
	t.Logf("writers stopped at %s", time.Since(t00))
	check := natstest.Connect(t, c.URLs())
	for key, r := range acked {
		var g pb.GetResponse
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := storageCall(ctx, check, "get", &pb.GetRequest{Key: key}, &g)
		cancel()
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if !g.Found || g.Revision < r || (g.Revision == r && string(g.Value) != values[key]) {
			t.Fatalf("get %s = %v, acknowledged %q at revision %d", key, &g, values[key], r)
		}
	}
	t.Logf("gets done at %s", time.Since(t00))
	var sc pb.ScanResponse
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := storageCall(ctx, check, "scan", &pb.ScanRequest{Limit: 1000}, &sc); err != nil {
		t.Fatal(err)
	}
	t.Logf("checked at %s", time.Since(t00))
	if len(sc.Items) != len(acked) {
		t.Fatalf("scan after failover: %d keys, want %d", len(sc.Items), len(acked))
	}
}
