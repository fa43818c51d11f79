package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natsembed"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/services/router/consistenthash"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BulkLoad writes every key of spec straight into the shard buckets of a
// deployment, routed as the router routes them, with asynchronous
// JetStream publishes: the stored messages are exactly what an unfenced
// put without TTL stores, and loading 1M keys takes seconds instead of
// minutes. Running storage instances pick the keys up like any write.
func BulkLoad(ctx context.Context, nc *nats.Conn, prefix string, shards int, spec Spec) error {
	ids := make([]string, max(shards, 1))
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	m := consistenthash.New(ids)
	subj := subjects.New(prefix)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return err
	}
	v := value(rand.New(rand.NewSource(1)), spec.ValueSize)
	for i := 0; i < spec.Keys; i++ {
		k := keyName(i)
		if err := publishAsync(ctx, js, "$KV."+subj.ShardBucket(m.Get(k))+"."+jskv.EncodeKey(k), v); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Minute):
		return errors.New("bulk load did not complete in 10 minutes")
	}
	return nil
}

// StorageFigures is the footprint of one storage instance serving one
// shard of Keys keys.
type StorageFigures struct {
	Keys      int   `json:"keys"`
	ValueSize int   `json:"value_size"`
	RawBytes  int64 `json:"raw_bytes"` // keys + values
	// HeapBytes is the live Go heap the instance added (after GC).
	HeapBytes int64 `json:"heap_bytes"`
	// RSSBytes is what the process's resident set grew by when the
	// instance started (Go runtime overhead included).
	RSSBytes int64 `json:"rss_bytes"`
	// StartToServe is storage.Start's duration on the loaded stream: the
	// time from a restart until the instance serves, view loaded.
	StartToServe time.Duration `json:"start_to_serve_ns"`
	LoadTime     time.Duration `json:"load_ns"`
}

// MeasureStorage loads keys into one shard of a fresh in-process NATS
// server, then starts a storage instance on it, as after a restart, and
// measures what that instance costs. NATS runs in the same process, so
// its own memory is excluded by taking differences around the start.
func MeasureStorage(ctx context.Context, dir string, keys, valueSize int, log *slog.Logger) (StorageFigures, error) {
	fig := StorageFigures{Keys: keys, ValueSize: valueSize}
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	srv, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "nats-memory"), Name: "latchkey-bench-memory"})
	if err != nil {
		return fig, err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := nats.Connect(srv.ClientURL(), nats.InProcessServer(srv))
	if err != nil {
		return fig, err
	}
	defer nc.Close()
	// A first instance creates the bucket; it stops before the load so
	// the second one finds a full stream, as after a restart.
	cfg := storage.Config{Shards: []string{"0"}, Logger: log}
	first, err := storage.Start(ctx, nc, cfg)
	if err != nil {
		return fig, err
	}
	if err := first.Stop(ctx); err != nil {
		return fig, err
	}
	t0 := time.Now()
	spec := Spec{Keys: keys, ValueSize: valueSize}
	if err := BulkLoad(ctx, nc, "", 1, spec); err != nil {
		return fig, err
	}
	fig.LoadTime = time.Since(t0)
	fig.RawBytes = int64(keys) * int64(len(keyName(0))+valueSize)
	// Let the server's block cache expire, so the figures below are the
	// instance's, not the server's read cache.
	time.Sleep(3 * time.Second)
	heap0, rss0 := settle()
	nc2, err := nats.Connect(srv.ClientURL(), nats.InProcessServer(srv))
	if err != nil {
		return fig, err
	}
	defer nc2.Close()
	t1 := time.Now()
	inst, err := storage.Start(ctx, nc2, cfg)
	if err != nil {
		return fig, err
	}
	fig.StartToServe = time.Since(t1)
	defer func() { _ = inst.Stop(context.Background()) }()
	time.Sleep(3 * time.Second)
	heap1, rss1 := settle()
	fig.HeapBytes, fig.RSSBytes = heap1-heap0, rss1-rss0
	runtime.KeepAlive(inst)
	return fig, nil
}

// settle collects garbage and returns the live heap and the resident set.
func settle() (heap, rss int64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc), readRSS()
}

// readRSS returns VmRSS of this process in bytes, 0 where /proc is absent.
func readRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// String prints the figures as one paragraph.
func (f StorageFigures) String() string {
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }
	return fmt.Sprintf("storage instance with %d keys of %d B (raw %s): live heap +%s (%.2fx raw), RSS +%s (%.2fx raw); restart to serving %v (bulk load took %v)",
		f.Keys, f.ValueSize, mb(f.RawBytes), mb(f.HeapBytes), float64(f.HeapBytes)/float64(f.RawBytes),
		mb(f.RSSBytes), float64(f.RSSBytes)/float64(f.RawBytes), f.StartToServe.Round(time.Millisecond), f.LoadTime.Round(time.Millisecond))
}
