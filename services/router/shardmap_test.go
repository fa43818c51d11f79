package router_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

func readRecord(t *testing.T, js jetstream.JetStream) *pb.ShardMap {
	t.Helper()
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, subjects.New("").MetaBucket())
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "shardmap")
	if err != nil {
		t.Fatal(err)
	}
	m := &pb.ShardMap{}
	if err := proto.Unmarshal(e.Value(), m); err != nil {
		t.Fatal(err)
	}
	return m
}

func tryStart(t *testing.T, url string, shards int) (*router.Server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := router.Start(ctx, natstest.Connect(t, url), router.Config{Shards: shards, Logger: quiet})
	if err == nil {
		t.Cleanup(func() { _ = r.Stop(context.Background()) })
	}
	return r, err
}

// TestShardMap walks the shard map's life: created once by racing routers,
// reused, changed while empty (running routers follow), refused once a
// shard holds data.
func TestShardMap(t *testing.T) {
	url := natstest.Server(t).ClientURL()
	js, err := jetstream.New(natstest.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	if _, err := tryStart(t, url, 0); !errors.Is(err, router.ErrNoShardMap) {
		t.Fatalf("Shards 0 without a map: %v, want ErrNoShardMap", err)
	}

	// Four routers start at once; exactly one creates the record.
	routers := make([]*router.Server, 4)
	var wg sync.WaitGroup
	for i := range routers {
		wg.Go(func() {
			r, err := tryStart(t, url, 3)
			if err != nil {
				t.Error(err)
			}
			routers[i] = r
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if m := readRecord(t, js); m.Epoch != 1 || !slices.Equal(m.Shards, ids(3)) {
		t.Fatalf("record after first start: %v, want epoch 1 shards 0..2", m)
	}
	for _, r := range routers {
		if epoch, shards := r.ShardMap(); epoch != 1 || !slices.Equal(shards, ids(3)) {
			t.Fatalf("router uses epoch %d shards %v", epoch, shards)
		}
	}

	// The same set, or Shards 0, uses the record as it is.
	for _, n := range []int{3, 0} {
		r, err := tryStart(t, url, n)
		if err != nil {
			t.Fatalf("Shards %d: %v", n, err)
		}
		if epoch, _ := r.ShardMap(); epoch != 1 {
			t.Fatalf("Shards %d moved the epoch to %d", n, epoch)
		}
	}

	// No shard holds data yet: the set may change, and running routers
	// follow the watched record.
	if _, err := tryStart(t, url, 4); err != nil {
		t.Fatalf("4 shards over empty shards: %v", err)
	}
	if m := readRecord(t, js); m.Epoch != 2 || !slices.Equal(m.Shards, ids(4)) {
		t.Fatalf("record after the change: %v, want epoch 2 shards 0..3", m)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		epoch, shards := routers[0].ShardMap()
		if epoch == 2 && slices.Equal(shards, ids(4)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("running router still on epoch %d shards %v", epoch, shards)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Shard 2 stores a key: from now on the set is fixed.
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subjects.New("").ShardBucket("2")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	_, err = tryStart(t, url, 5)
	const want = "the deployment has 4 shards holding data; changing to 5 moves keys: use `latchkey shards set` (latchkey.admin.shards.set), which moves them online"
	if !errors.Is(err, router.ErrMigrationNeeded) || err.Error() != want {
		t.Fatalf("changing a set with data: %v, want %q", err, want)
	}
	if m := readRecord(t, js); m.Epoch != 2 {
		t.Fatalf("refused change still wrote epoch %d", m.Epoch)
	}
	if _, err := tryStart(t, url, 4); err != nil {
		t.Fatalf("same set with data: %v", err)
	}
}
