package tests

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go/jetstream"
)

// Storage writes barrier messages into every shard it serves; they are not
// data, so they must not freeze the shard set. A real key must.
func TestShardSetChangeIgnoresStorageBarriers(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	ctx := testCtx(t)
	quiet := slog.New(slog.DiscardHandler)
	st, err := storage.Start(ctx, nc, storage.Config{Shards: suite.ShardIDs(4), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Stop(context.Background()) })
	startRouter := func(shards int) (*router.Server, error) {
		r, err := router.Start(ctx, natstest.Connect(t, srv.ClientURL()), router.Config{Shards: shards, Logger: quiet})
		if err == nil {
			t.Cleanup(func() { _ = r.Stop(context.Background()) })
		}
		return r, err
	}
	if _, err := startRouter(2); err != nil {
		t.Fatal(err)
	}
	c := client.New(nc)
	// A linearizable scan makes storage publish a barrier on each shard.
	if _, err := c.Scan(ctx, ""); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s0, err := js.Stream(ctx, "KV_"+subjects.New("").ShardBucket("0"))
	if err != nil {
		t.Fatal(err)
	}
	if state := s0.CachedInfo().State; state.Msgs == 0 {
		t.Fatalf("shard 0 holds no barrier after a scan (state %+v); the test proves nothing", state)
	}

	r, err := startRouter(3)
	if err != nil {
		t.Fatalf("changing 2 -> 3 shards that hold only barriers: %v", err)
	}
	if epoch, _ := r.ShardMap(); epoch != 2 {
		t.Fatalf("shard map epoch %d after the change, want 2", epoch)
	}

	putCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Put(putCtx, "user:42", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := startRouter(4); !errors.Is(err, router.ErrMigrationNeeded) {
		t.Fatalf("changing 3 -> 4 shards with a key stored: %v, want ErrMigrationNeeded", err)
	}
}
