package storage_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

var subj = subjects.New("")

// env is one NATS server plus a connection for tests.
type env struct {
	t   testing.TB
	nc  *nats.Conn
	url string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	s := natstest.Server(t)
	return &env{t: t, nc: natstest.Connect(t, s.ClientURL()), url: s.ClientURL()}
}

func (e *env) start(shards ...string) *storage.Server {
	e.t.Helper()
	return startOn(e.t, e.nc, storage.Config{Shards: shards})
}

func startOn(t testing.TB, nc *nats.Conn, cfg storage.Config) *storage.Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := storage.Start(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return s
}

func call(nc *nats.Conn, shard, op string, req, resp proto.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return service.Call(ctx, nc, subj.Shard(shard, op), nil, req, resp)
}

func put(t testing.TB, nc *nats.Conn, req *pb.PutRequest) uint64 {
	t.Helper()
	var resp pb.PutResponse
	if err := call(nc, "0", "put", req, &resp); err != nil {
		t.Fatalf("put %q: %v", req.Key, err)
	}
	return resp.Revision
}

func get(t testing.TB, nc *nats.Conn, key string, c pb.Consistency) *pb.GetResponse {
	t.Helper()
	var resp pb.GetResponse
	if err := call(nc, "0", "get", &pb.GetRequest{Key: key, Consistency: c}, &resp); err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return &resp
}

func del(t testing.TB, nc *nats.Conn, req *pb.DeleteRequest) *pb.DeleteResponse {
	t.Helper()
	var resp pb.DeleteResponse
	if err := call(nc, "0", "delete", req, &resp); err != nil {
		t.Fatalf("delete %q: %v", req.Key, err)
	}
	return &resp
}

func scan(t testing.TB, nc *nats.Conn, req *pb.ScanRequest) *pb.ScanResponse {
	t.Helper()
	var resp pb.ScanResponse
	if err := call(nc, "0", "scan", req, &resp); err != nil {
		t.Fatalf("scan: %v", err)
	}
	return &resp
}

func wantCode(t testing.TB, err error, code int, reason string) {
	t.Helper()
	var e *apierr.Error
	if !errors.As(err, &e) {
		t.Fatalf("want a %d error, got %v", code, err)
	}
	if e.Code() != code || (reason != "" && e.Reason != reason) {
		t.Fatalf("want %d %s, got %d %s: %s", code, reason, e.Code(), e.Reason, e.Message)
	}
}

func rev(n uint64) *uint64 { return &n }

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var oddKeys = []string{
	"plain",
	"with space",
	"a.b.c",
	"star*",
	"gt>",
	"$dollar",
	"slash/and\\back",
	"ünïcødé ✓ 日本",
	"=sync",
	strings.Repeat("k", 1024),
	strings.Repeat("é", 512),
}

func TestRoundTrip(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	for _, key := range oddKeys {
		val := []byte("value of " + key)
		r := put(t, e.nc, &pb.PutRequest{Key: key, Value: val})
		if r == 0 {
			t.Fatalf("put %q: revision 0", key)
		}
		got := get(t, e.nc, key, pb.Consistency_CONSISTENCY_UNSPECIFIED)
		if !got.Found || string(got.Value) != string(val) || got.Revision != r || got.Key != key {
			t.Fatalf("get %q = %v, want value %q at %d", key, got, val, r)
		}
		eventually(t, 5*time.Second, "stale read of "+key, func() bool {
			g := get(t, e.nc, key, pb.Consistency_CONSISTENCY_STALE)
			return g.Found && g.Revision == r
		})
	}
	page := scan(t, e.nc, &pb.ScanRequest{Limit: 1000})
	if len(page.Items) != len(oddKeys) || page.More {
		t.Fatalf("scan: %d items (more %v), want %d", len(page.Items), page.More, len(oddKeys))
	}
	for i := 1; i < len(page.Items); i++ {
		if page.Items[i-1].Key >= page.Items[i].Key {
			t.Fatalf("scan not sorted: %q before %q", page.Items[i-1].Key, page.Items[i].Key)
		}
	}
	for _, key := range oddKeys {
		d := del(t, e.nc, &pb.DeleteRequest{Key: key})
		if !d.Deleted {
			t.Fatalf("delete %q: not deleted", key)
		}
		if g := get(t, e.nc, key, pb.Consistency_CONSISTENCY_LINEARIZABLE); g.Found {
			t.Fatalf("get %q after delete: found", key)
		}
		if d := del(t, e.nc, &pb.DeleteRequest{Key: key}); d.Deleted {
			t.Fatalf("second delete %q: deleted again", key)
		}
	}
	if page := scan(t, e.nc, &pb.ScanRequest{}); len(page.Items) != 0 {
		t.Fatalf("scan after deleting all: %v", page.Items)
	}
}

func TestScanPages(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	for i := range 25 {
		put(t, e.nc, &pb.PutRequest{Key: fmt.Sprintf("user:%02d", i), Value: []byte{byte(i)}})
	}
	put(t, e.nc, &pb.PutRequest{Key: "other", Value: []byte("x")})
	put(t, e.nc, &pb.PutRequest{Key: "user", Value: []byte("x")}) // sorts before "user:"
	del(t, e.nc, &pb.DeleteRequest{Key: "user:03"})

	var keys []string
	after := ""
	for pages := 0; ; pages++ {
		// Scans run right after the writes: the barrier must make them visible.
		p := scan(t, e.nc, &pb.ScanRequest{Prefix: "user:", Limit: 10, After: after})
		for _, it := range p.Items {
			keys = append(keys, it.Key)
		}
		if !p.More {
			break
		}
		if pages > 5 {
			t.Fatal("scan does not end")
		}
		after = p.Items[len(p.Items)-1].Key
	}
	if len(keys) != 24 || keys[0] != "user:00" || keys[3] != "user:04" || keys[23] != "user:24" {
		t.Fatalf("paged scan gave %v", keys)
	}
	// A page that ends exactly at the last key says there is no more.
	p := scan(t, e.nc, &pb.ScanRequest{Prefix: "user:2", Limit: 5})
	if len(p.Items) != 5 || p.More {
		t.Fatalf("scan user:2 limit 5: %d items more=%v", len(p.Items), p.More)
	}
}

func TestJSONRequest(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	reply, err := e.nc.Request(subj.Shard("0", "put"), []byte(`{"key":"a b.c","value":"aGVsbG8="}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(reply.Data), `"revision"`) || reply.Header.Get(apierr.HeaderCode) != "" {
		t.Fatalf("JSON put reply %q %v", reply.Data, reply.Header)
	}
	reply, err = e.nc.Request(subj.Shard("0", "get"), []byte(`{"key":"a b.c"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(reply.Data), `"value":"aGVsbG8="`) || !strings.Contains(string(reply.Data), `"found":true`) {
		t.Fatalf("JSON get reply %s", reply.Data)
	}
	reply, err = e.nc.Request(subj.Shard("0", "get"), []byte(`{"key":""}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Header.Get(apierr.HeaderCode) != "400" || !strings.Contains(string(reply.Data), `"code":400`) {
		t.Fatalf("JSON error reply %s %v", reply.Data, reply.Header)
	}
}

func TestCompareAndSet(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	r1 := put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("1"), ExpectedRevision: rev(0)})
	var resp pb.PutResponse
	wantCode(t, call(e.nc, "0", "put", &pb.PutRequest{Key: "k", Value: []byte("x"), ExpectedRevision: rev(0)}, &resp), 409, "revision_mismatch")
	wantCode(t, call(e.nc, "0", "put", &pb.PutRequest{Key: "k", Value: []byte("x"), ExpectedRevision: rev(r1 + 1)}, &resp), 409, "revision_mismatch")
	r2 := put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("2"), ExpectedRevision: rev(r1)})
	if r2 <= r1 {
		t.Fatalf("revision did not grow: %d then %d", r1, r2)
	}
	var dresp pb.DeleteResponse
	wantCode(t, call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "k", ExpectedRevision: rev(r1)}, &dresp), 409, "revision_mismatch")
	if g := get(t, e.nc, "k", 0); string(g.Value) != "2" || g.Revision != r2 {
		t.Fatalf("failed CAS changed the key: %v", g)
	}
	d := del(t, e.nc, &pb.DeleteRequest{Key: "k", ExpectedRevision: rev(r2)})
	if !d.Deleted || d.Revision <= r2 {
		t.Fatalf("checked delete: %v", d)
	}
	// On a deleted key, only "absent" matches.
	wantCode(t, call(e.nc, "0", "put", &pb.PutRequest{Key: "k", Value: []byte("x"), ExpectedRevision: rev(d.Revision)}, &resp), 409, "revision_mismatch")
	wantCode(t, call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "k", ExpectedRevision: rev(r2)}, &dresp), 409, "revision_mismatch")
	if g := get(t, e.nc, "k", 0); g.Found {
		t.Fatalf("failed CAS on a deleted key wrote it: %v", g)
	}
	r3 := put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("3"), ExpectedRevision: rev(0)})
	if g := get(t, e.nc, "k", 0); string(g.Value) != "3" || g.Revision != r3 {
		t.Fatalf("create on a deleted key: %v", g)
	}
}

func TestTTLExpiresWithoutStorage(t *testing.T) {
	e := newEnv(t)
	s := e.start("0")
	put(t, e.nc, &pb.PutRequest{Key: "short", Value: []byte("v"), TtlMs: 1000})
	put(t, e.nc, &pb.PutRequest{Key: "long", Value: []byte("v")})
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Nothing of latchkey runs now; the server expires the key on its own.
	time.Sleep(1500 * time.Millisecond)
	e.start("0")
	eventually(t, 10*time.Second, "ttl expiry", func() bool {
		return !get(t, e.nc, "short", 0).Found
	})
	eventually(t, 5*time.Second, "expiry seen by scans", func() bool {
		p := scan(t, e.nc, &pb.ScanRequest{})
		return len(p.Items) == 1 && p.Items[0].Key == "long"
	})
	if !get(t, e.nc, "long", 0).Found {
		t.Fatal("key without ttl expired")
	}
}

func TestTTLExpiryReachesRunningView(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	put(t, e.nc, &pb.PutRequest{Key: "a", Value: []byte("v"), TtlMs: 1001})
	if !get(t, e.nc, "a", pb.Consistency_CONSISTENCY_LINEARIZABLE).Found {
		t.Fatal("ttl key missing right after put")
	}
	eventually(t, 10*time.Second, "expiry in view", func() bool {
		return !get(t, e.nc, "a", pb.Consistency_CONSISTENCY_STALE).Found &&
			len(scan(t, e.nc, &pb.ScanRequest{}).Items) == 0
	})
	// A plain put after a ttl put makes the key permanent.
	put(t, e.nc, &pb.PutRequest{Key: "b", Value: []byte("v"), TtlMs: 1000})
	put(t, e.nc, &pb.PutRequest{Key: "b", Value: []byte("w")})
	time.Sleep(2500 * time.Millisecond)
	if g := get(t, e.nc, "b", 0); !g.Found || string(g.Value) != "w" {
		t.Fatalf("overwritten ttl key: %v", g)
	}
}

func fence(lock string, token uint64) *pb.Fence { return &pb.Fence{Lock: lock, Token: token} }

func TestFencing(t *testing.T) {
	e := newEnv(t)
	issueTokens(t, e.nc, 10)
	s := e.start("0")
	var presp pb.PutResponse
	var dresp pb.DeleteResponse
	stalePut := func(nc *nats.Conn, key string, token uint64) error {
		return call(nc, "0", "put", &pb.PutRequest{Key: key, Value: []byte("stale"), Fence: fence("L", token)}, &presp)
	}
	put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("t5"), Fence: fence("L", 5)})
	put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("t5 again"), Fence: fence("L", 5)})
	wantCode(t, stalePut(e.nc, "k", 4), 409, "stale_fence")
	wantCode(t, call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "k", Fence: fence("L", 3)}, &dresp), 409, "stale_fence")
	// Another lock's tokens are independent.
	put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("m1"), Fence: fence("M", 1)})
	// An unfenced write keeps the fences.
	put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("plain")})
	wantCode(t, stalePut(e.nc, "k", 4), 409, "stale_fence")
	if g := get(t, e.nc, "k", 0); string(g.Value) != "plain" {
		t.Fatalf("refused write changed the key: %q", g.Value)
	}
	// A fenced delete keeps them too, and so does a later re-creation.
	d := del(t, e.nc, &pb.DeleteRequest{Key: "k", Fence: fence("L", 6)})
	if !d.Deleted {
		t.Fatal("fenced delete did not delete")
	}
	wantCode(t, stalePut(e.nc, "k", 5), 409, "stale_fence")
	put(t, e.nc, &pb.PutRequest{Key: "k", Value: []byte("again")})
	wantCode(t, stalePut(e.nc, "k", 5), 409, "stale_fence")

	// A delete of an absent key under a newer token records the token.
	del(t, e.nc, &pb.DeleteRequest{Key: "never", Fence: fence("L", 9)})
	wantCode(t, stalePut(e.nc, "never", 8), 409, "stale_fence")

	// Restart: fences live in the stream, not in the instance.
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.start("0")
	wantCode(t, stalePut(e.nc, "k", 5), 409, "stale_fence")
	// Fail-over: another instance of the shard on its own connection.
	other := natstest.Connect(t, e.url)
	startOn(t, other, storage.Config{Shards: []string{"0"}})
	for range 4 { // the queue group spreads requests over both instances
		wantCode(t, stalePut(other, "k", 5), 409, "stale_fence")
	}
	if g := get(t, e.nc, "k", 0); string(g.Value) != "again" {
		t.Fatalf("value after refused writes: %q", g.Value)
	}
	put(t, other, &pb.PutRequest{Key: "k", Value: []byte("t7"), Fence: fence("L", 7)})
	wantCode(t, stalePut(e.nc, "k", 6), 409, "stale_fence")
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	startOn(t, e.nc, storage.Config{Shards: []string{"0"}, MaxValueBytes: 1000})
	long := strings.Repeat("x", 1025)
	cases := []struct {
		name string
		op   string
		req  proto.Message
		raw  []byte
		code int
	}{
		{"empty key", "put", &pb.PutRequest{Value: []byte("v")}, nil, 400},
		{"empty get key", "get", &pb.GetRequest{}, nil, 400},
		{"long key", "put", &pb.PutRequest{Key: long}, nil, 413},
		{"long delete key", "delete", &pb.DeleteRequest{Key: long}, nil, 413},
		{"bad utf8", "get", &pb.GetRequest{Key: "\xff"}, nil, 400},
		{"value too large", "put", &pb.PutRequest{Key: "k", Value: make([]byte, 1001)}, nil, 413},
		{"ttl too short", "put", &pb.PutRequest{Key: "k", TtlMs: 500}, nil, 400},
		{"negative ttl", "put", &pb.PutRequest{Key: "k", TtlMs: -1}, nil, 400},
		{"scan limit", "scan", &pb.ScanRequest{Limit: 5000}, nil, 400},
		{"long prefix", "scan", &pb.ScanRequest{Prefix: long}, nil, 413},
		{"fence without token", "put", &pb.PutRequest{Key: "k", Fence: &pb.Fence{Lock: "L"}}, nil, 400},
		{"fence without lock", "delete", &pb.DeleteRequest{Key: "k", Fence: &pb.Fence{Token: 1}}, nil, 400},
		{"bad consistency", "get", &pb.GetRequest{Key: "k", Consistency: 7}, nil, 400},
		{"malformed protobuf", "put", nil, []byte{0xff, 0xff, 0xff}, 400},
		{"malformed json", "get", nil, []byte(`{"key":`), 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.raw
			if c.req != nil {
				data, _ = proto.Marshal(c.req)
			}
			reply, err := e.nc.Request(subj.Shard("0", c.op), data, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := reply.Header.Get(apierr.HeaderCode); got != fmt.Sprint(c.code) {
				t.Fatalf("code %q (%s), want %d", got, reply.Header.Get(apierr.HeaderMessage), c.code)
			}
			if reply.Header.Get(apierr.HeaderMessage) == "" {
				t.Fatal("error without a sentence")
			}
		})
	}
	if g := get(t, e.nc, "k", 0); g.Found {
		t.Fatal("a refused request wrote")
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	e := newEnv(t)
	for _, shards := range [][]string{nil, {"a.b"}, {"0", "0"}} {
		_, err := storage.Start(context.Background(), e.nc, storage.Config{Shards: shards})
		if !errors.Is(err, storage.ErrConfig) {
			t.Errorf("shards %q: err %v, want ErrConfig", shards, err)
		}
	}
}

func TestShardsAreSeparate(t *testing.T) {
	e := newEnv(t)
	e.start("0", "1")
	var resp pb.PutResponse
	if err := call(e.nc, "1", "put", &pb.PutRequest{Key: "only-in-1", Value: []byte("v")}, &resp); err != nil {
		t.Fatal(err)
	}
	if g := get(t, e.nc, "only-in-1", 0); g.Found {
		t.Fatal("shard 0 sees shard 1's key")
	}
	var sresp pb.ScanResponse
	if err := call(e.nc, "1", "scan", &pb.ScanRequest{}, &sresp); err != nil || len(sresp.Items) != 1 {
		t.Fatalf("scan shard 1: %v %v", sresp.Items, err)
	}
}

// ExampleStart serves shards 0-2 of the default prefix from one NATS server.
func ExampleStart() {
	dir := tempDir()
	defer os.RemoveAll(dir)
	ns, err := natstest.Start(natstest.Options{StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer ns.Shutdown()
	nc, _ := nats.Connect(ns.ClientURL())
	defer nc.Close()

	srv, err := storage.Start(context.Background(), nc, storage.Config{
		Shards: []string{"0", "1", "2"},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	defer srv.Stop(context.Background())

	var put pb.PutResponse
	_ = service.Call(context.Background(), nc, subjects.New("").Shard("1", "put"), nil,
		&pb.PutRequest{Key: "user:42", Value: []byte("Ada")}, &put)
	var got pb.GetResponse
	_ = service.Call(context.Background(), nc, subjects.New("").Shard("1", "get"), nil,
		&pb.GetRequest{Key: "user:42"}, &got)
	fmt.Println(got.Found, string(got.Value), got.Revision == put.Revision)
	// Output: true Ada true
}
