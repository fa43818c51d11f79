package storage_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// issueTokens makes the lock bucket's stream hold n messages, as if a
// locker had issued tokens 1..n: shards refuse fence tokens above the lock
// stream's last sequence (unknown_token).
func issueTokens(t testing.TB, nc *nats.Conn, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subjects.New("").LockBucket(), LimitMarkerTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := kv.Put(ctx, jskv.EncodeKey("issued"+strings.Repeat("x", i%3)), []byte("t")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFenceEdges walks the fence rules of docs/API.md at their limits: a
// fence next to a TTL, a key carrying the most fences it may, a token that
// was never issued.
func TestFenceEdges(t *testing.T) {
	e := newEnv(t)
	issueTokens(t, e.nc, 100)
	e.start("0")
	var presp pb.PutResponse
	var dresp pb.DeleteResponse
	putReq := func(key, lock string, token uint64, ttl int64) error {
		r := &pb.PutRequest{Key: key, Value: []byte("v"), TtlMs: ttl}
		if lock != "" {
			r.Fence = fence(lock, token)
		}
		return call(e.nc, "0", "put", r, &presp)
	}
	long := func(i int) string { return fmt.Sprintf("%03d%s", i, strings.Repeat("n", 253)) }

	put(t, e.nc, &pb.PutRequest{Key: "fenced", Value: []byte("v"), Fence: fence("L", 2)})
	del(t, e.nc, &pb.DeleteRequest{Key: "deleted-fenced", Fence: fence("L", 2)})
	put(t, e.nc, &pb.PutRequest{Key: "ttl", Value: []byte("v"), TtlMs: 60000})
	for i := range storage.MaxFenceLocks {
		put(t, e.nc, &pb.PutRequest{Key: "full", Value: []byte("v"), Fence: fence(fmt.Sprintf("lock-%d", i), 3)})
	}
	longLocks := 0
	for i := 0; ; i++ {
		if err := putReq("full-long", long(i), 3, 0); err != nil {
			wantCode(t, err, 409, "too_many_fences")
			break
		}
		longLocks++
	}
	if longLocks >= storage.MaxFenceLocks || longLocks < 10 {
		t.Fatalf("%d locks of 256-byte names fit in %d bytes of fences; want the byte bound to stop them first", longLocks, storage.MaxFenceHeaderBytes)
	}

	cases := []struct {
		name   string
		do     func() error
		code   int
		reason string
	}{
		{"fence with ttl", func() error { return putReq("k", "L", 2, 1000) }, 400, "fence_with_ttl"},
		{"ttl on a fenced key", func() error { return putReq("fenced", "", 0, 5000) }, 409, "fenced_key_ttl"},
		{"ttl on a deleted fenced key", func() error { return putReq("deleted-fenced", "", 0, 5000) }, 409, "fenced_key_ttl"},
		{"fenced key takes unfenced puts", func() error { return putReq("fenced", "", 0, 0) }, 0, ""},
		{"fence on a ttl key", func() error { return putReq("ttl", "L", 2, 0) }, 0, ""},
		{"token never issued", func() error { return putReq("k", "L", 101, 0) }, 400, "unknown_token"},
		{"huge token", func() error { return putReq("k", "L", 1<<62, 0) }, 400, "unknown_token"},
		{"delete with a token never issued", func() error {
			return call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "fenced", Fence: fence("L", 1<<40)}, &dresp)
		}, 400, "unknown_token"},
		{"last issued token", func() error { return putReq("k2", "L", 100, 0) }, 0, ""},
		{"33rd lock", func() error { return putReq("full", "lock-new", 3, 0) }, 409, "too_many_fences"},
		{"full key takes unfenced puts", func() error { return putReq("full", "", 0, 0) }, 0, ""},
		{"full key takes its own locks", func() error { return putReq("full", "lock-7", 9, 0) }, 0, ""},
		{"full key still fences", func() error { return putReq("full", "lock-7", 8, 0) }, 409, "stale_fence"},
		{"full key takes deletes", func() error {
			return call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "full"}, &dresp)
		}, 0, ""},
		{"full key written again", func() error { return putReq("full", "", 0, 0) }, 0, ""},
		{"long-named full key takes unfenced puts", func() error { return putReq("full-long", "", 0, 0) }, 0, ""},
		{"long-named full key takes its own locks", func() error { return putReq("full-long", long(0), 4, 0) }, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.do()
			if c.code == 0 {
				if err != nil {
					t.Fatalf("want success, got %v", err)
				}
				return
			}
			wantCode(t, err, c.code, c.reason)
		})
	}
	if g := get(t, e.nc, "k", 0); g.Found {
		t.Fatal("a refused put wrote key k")
	}
}

// TestUnknownTokenWithoutLocker: with no lock bucket at all, no token was
// ever issued, so every fence is refused (and nothing is written).
func TestUnknownTokenWithoutLocker(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	var presp pb.PutResponse
	wantCode(t, call(e.nc, "0", "put", &pb.PutRequest{Key: "k", Fence: fence("L", 1)}, &presp), 400, "unknown_token")
	if g := get(t, e.nc, "k", 0); g.Found {
		t.Fatal("refused put wrote")
	}
}

// TestWritesInsideTheTTLGuard pins what a caller sees when it writes a key
// whose TTL'd value runs out less than the guard from now: the write
// waits for the server's expiry and then applies to the absent key.
func TestWritesInsideTheTTLGuard(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	js, _ := jetstream.New(e.nc)
	stream := "KV_" + subj.ShardBucket("0")
	expiryOf := func(rev uint64) time.Time {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetMsg(ctx, rev)
		if err != nil {
			t.Fatal(err)
		}
		return m.Time.Add(time.Second)
	}
	intoGuard := func(key string) (rev uint64, expiry time.Time) {
		rev = put(t, e.nc, &pb.PutRequest{Key: key, Value: []byte("ttl"), TtlMs: 1000})
		expiry = expiryOf(rev)
		time.Sleep(time.Until(expiry.Add(-storage.DefaultTTLGuard / 2)))
		return rev, expiry
	}
	var presp pb.PutResponse
	var dresp pb.DeleteResponse

	rev, expiry := intoGuard("cas")
	err := call(e.nc, "0", "put", &pb.PutRequest{Key: "cas", Value: []byte("v"), ExpectedRevision: &rev}, &presp)
	wantCode(t, err, 409, "revision_mismatch")
	if time.Now().Before(expiry) {
		t.Fatalf("a CAS on a value inside the guard was answered before the value's expiry")
	}

	_, expiry = intoGuard("del")
	if err := call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "del"}, &dresp); err != nil || dresp.Deleted {
		t.Fatalf("delete inside the guard: %v deleted=%v; want the key already expired (deleted false)", err, dresp.Deleted)
	}
	if time.Now().Before(expiry) {
		t.Fatalf("a delete inside the guard was answered before the value's expiry")
	}

	_, expiry = intoGuard("put")
	if err := call(e.nc, "0", "put", &pb.PutRequest{Key: "put", Value: []byte("kept")}, &presp); err != nil {
		t.Fatal(err)
	}
	if time.Now().Before(expiry) {
		t.Fatalf("a put inside the guard was answered before the value's expiry")
	}
	time.Sleep(time.Second)
	if g := get(t, e.nc, "put", 0); !g.Found || string(g.Value) != "kept" || g.Revision != presp.Revision {
		t.Fatalf("put inside the guard: got %v, want kept at revision %d", g, presp.Revision)
	}

	// Outside the guard nothing waits: the CAS lands on the TTL'd value.
	rev = put(t, e.nc, &pb.PutRequest{Key: "early", Value: []byte("ttl"), TtlMs: 1000})
	if err := call(e.nc, "0", "put", &pb.PutRequest{Key: "early", Value: []byte("v"), ExpectedRevision: &rev}, &presp); err != nil {
		t.Fatalf("CAS well before the expiry: %v", err)
	}
}
