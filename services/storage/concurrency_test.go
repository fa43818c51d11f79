package storage_test

import (
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/latchkey/latchkey/kit/natstest"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
)

// TestConcurrentCASAcrossInstances runs read-modify-write increments on one
// key through two instances of the same shard: no increment may be lost.
func TestConcurrentCASAcrossInstances(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	other := natstest.Connect(t, e.url)
	startOn(t, other, storage.Config{Shards: []string{"0"}})
	put(t, e.nc, &pb.PutRequest{Key: "counter", Value: []byte("0")})

	const workers, each = 6, 15
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < each; {
				var g pb.GetResponse
				if err := call(e.nc, "0", "get", &pb.GetRequest{Key: "counter"}, &g); err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(string(g.Value))
				var p pb.PutResponse
				err := call(e.nc, "0", "put", &pb.PutRequest{Key: "counter", Value: []byte(strconv.Itoa(n + 1)), ExpectedRevision: rev(g.Revision)}, &p)
				if err == nil {
					done++
				}
			}
		}()
	}
	// Meanwhile, unconditional puts of another key never fail with contention.
	for i := range 50 {
		put(t, e.nc, &pb.PutRequest{Key: "hot", Value: []byte(fmt.Sprint(i))})
	}
	wg.Wait()
	if g := get(t, e.nc, "counter", 0); string(g.Value) != strconv.Itoa(workers*each) {
		t.Fatalf("counter = %s, want %d: an increment was lost", g.Value, workers*each)
	}
}

// TestScanSeesAcknowledgedWrites writes through one instance and scans
// through the shard's queue group (either instance): a scan must include
// every put acknowledged before it started.
func TestScanSeesAcknowledgedWrites(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	other := natstest.Connect(t, e.url)
	startOn(t, other, storage.Config{Shards: []string{"0"}})
	for i := range 40 {
		key := fmt.Sprintf("s%03d", i)
		r := put(t, other, &pb.PutRequest{Key: key, Value: []byte("v")})
		p := scan(t, e.nc, &pb.ScanRequest{Prefix: key})
		if len(p.Items) != 1 || p.Items[0].Revision != r {
			t.Fatalf("scan right after put %s at %d: %v", key, r, p.Items)
		}
		del(t, other, &pb.DeleteRequest{Key: key})
		if p := scan(t, e.nc, &pb.ScanRequest{Prefix: key}); len(p.Items) != 0 {
			t.Fatalf("scan right after delete %s: %v", key, p.Items)
		}
	}
}
