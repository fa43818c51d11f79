package router_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router/consistenthash"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// TestBadInput sends one request per rule of docs/API.md, as protobuf and
// as JSON, and expects the router itself to answer with the rule's code.
func TestBadInput(t *testing.T) {
	e := newEnv(t, 3)
	for _, id := range ids(3) {
		e.serveShard(t, id, nil)
	}
	long := strings.Repeat("k", 1025)
	badUTF8 := string([]byte{0xff, 'a'})
	// protobuf field 1 (key) holding invalid UTF-8: proto.Marshal refuses
	// to write it, a hostile client would not.
	rawBadKey := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), badUTF8)
	tests := []struct {
		name     string
		endpoint string
		msg      proto.Message
		rawProto []byte // overrides proto.Marshal(msg)
		rawJSON  string // overrides protojson.Marshal(msg)
		code     int    // 0 = accepted and forwarded
		jsonOnly bool   // protobuf skips unknown fields by design
	}{
		{"get empty key", subjects.KVGet, &pb.GetRequest{}, nil, "", 400, false},
		{"get key over 1024 bytes", subjects.KVGet, &pb.GetRequest{Key: long}, nil, "", 413, false},
		{"get key of 1024 bytes", subjects.KVGet, &pb.GetRequest{Key: long[:1024]}, nil, "", 0, false},
		{"get key not UTF-8", subjects.KVGet, nil, rawBadKey, "{\"key\":\"" + badUTF8 + "\"}", 400, false},
		{"get unknown consistency", subjects.KVGet, &pb.GetRequest{Key: "a", Consistency: 9}, nil, "", 400, false},
		{"get stale", subjects.KVGet, &pb.GetRequest{Key: "a", Consistency: pb.Consistency_CONSISTENCY_STALE}, nil, "", 0, false},
		{"put empty key", subjects.KVPut, &pb.PutRequest{Value: []byte("v")}, nil, "", 400, false},
		{"put value over the limit", subjects.KVPut, &pb.PutRequest{Key: "a", Value: make([]byte, testMaxValue+1)}, nil, "", 413, false},
		{"put value at the limit", subjects.KVPut, &pb.PutRequest{Key: "a", Value: make([]byte, testMaxValue)}, nil, "", 0, false},
		{"put ttl under 1000 ms", subjects.KVPut, &pb.PutRequest{Key: "a", TtlMs: 999}, nil, "", 400, false},
		{"put negative ttl", subjects.KVPut, &pb.PutRequest{Key: "a", TtlMs: -1000}, nil, "", 400, false},
		{"put ttl over a year", subjects.KVPut, &pb.PutRequest{Key: "a", TtlMs: 366 * 24 * 3600 * 1000}, nil, "", 400, false},
		{"put ttl 1000 ms", subjects.KVPut, &pb.PutRequest{Key: "a", TtlMs: 1000}, nil, "", 0, false},
		{"put fence without token", subjects.KVPut, &pb.PutRequest{Key: "a", Fence: &pb.Fence{Lock: "l"}}, nil, "", 400, false},
		{"put fence without lock", subjects.KVPut, &pb.PutRequest{Key: "a", Fence: &pb.Fence{Token: 1}}, nil, "", 400, false},
		{"put fence lock over 256 bytes", subjects.KVPut, &pb.PutRequest{Key: "a", Fence: &pb.Fence{Lock: long[:257], Token: 1}}, nil, "", 413, false},
		{"put fenced", subjects.KVPut, &pb.PutRequest{Key: "a", Fence: &pb.Fence{Lock: long[:256], Token: 1}}, nil, "", 0, false},
		{"delete empty key", subjects.KVDelete, &pb.DeleteRequest{}, nil, "", 400, false},
		{"delete key over 1024 bytes", subjects.KVDelete, &pb.DeleteRequest{Key: long}, nil, "", 413, false},
		{"delete fence without token", subjects.KVDelete, &pb.DeleteRequest{Key: "a", Fence: &pb.Fence{Lock: "l"}}, nil, "", 400, false},
		{"scan limit over 1000", subjects.KVScan, &pb.ScanRequest{Limit: 1001}, nil, "", 400, false},
		{"scan limit 1000", subjects.KVScan, &pb.ScanRequest{Limit: 1000}, nil, "", 0, false},
		{"scan prefix over 1024 bytes", subjects.KVScan, &pb.ScanRequest{Prefix: long}, nil, "", 413, false},
		{"scan after over 1024 bytes", subjects.KVScan, &pb.ScanRequest{After: long}, nil, "", 413, false},
		{"malformed body", subjects.KVGet, nil, []byte{0xff, 0xff, 0xff}, `{"key":`, 400, false},
		{"unknown JSON field", subjects.KVGet, &pb.GetRequest{Key: "a"}, nil, `{"kee":"a"}`, 400, true},
	}
	for _, tc := range tests {
		for _, asJSON := range []bool{false, true} {
			if tc.jsonOnly && !asJSON {
				continue
			}
			name := tc.name + map[bool]string{false: "/protobuf", true: "/json"}[asJSON]
			t.Run(name, func(t *testing.T) {
				body := tc.rawProto
				switch {
				case asJSON && tc.rawJSON != "":
					body = []byte(tc.rawJSON)
				case asJSON:
					body = must(protojson.Marshal(tc.msg))
				case body == nil:
					body = must(proto.Marshal(tc.msg))
				}
				reply := e.request(t, tc.endpoint, nil, body)
				got := reply.Header.Get(apierr.HeaderCode)
				if want := fmt.Sprint(tc.code); tc.code != 0 && got != want {
					t.Fatalf("code %q (%s), want %s", got, reply.Header.Get(apierr.HeaderMessage), want)
				}
				if tc.code == 0 && got != "" {
					t.Fatalf("refused with %s: %s", got, reply.Header.Get(apierr.HeaderMessage))
				}
				if tc.code != 0 && reply.Header.Get(apierr.HeaderMessage) == "" {
					t.Error("error reply without a sentence")
				}
				if isJSON := len(reply.Data) > 0 && reply.Data[0] == '{'; isJSON != asJSON {
					t.Errorf("reply body %q: JSON=%v, want %v", reply.Data, isJSON, asJSON)
				}
			})
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestRouting checks every key lands on the shard consistenthash names, and
// that the shard's answer and errors come back unchanged.
func TestRouting(t *testing.T) {
	e := newEnv(t, 3)
	shards := map[string]*testShard{}
	for _, id := range ids(3) {
		shards[id] = e.serveShard(t, id, nil)
	}
	want := consistenthash.New(ids(3))
	seen := map[string]int{}
	for i := range 300 {
		key := fmt.Sprintf("user:%d", i)
		out := &pb.GetResponse{}
		if err := e.call(t, subjects.KVGet, &pb.GetRequest{Key: key}, out); err != nil {
			t.Fatal(err)
		}
		if got := string(out.Value); got != want.Get(key) || out.Key != key || out.Revision != 7 {
			t.Fatalf("%s answered by shard %s (%v), want shard %s", key, got, out, want.Get(key))
		}
		seen[string(out.Value)]++
	}
	if len(seen) != 3 {
		t.Errorf("300 keys reached shards %v, want all 3", seen)
	}

	err := e.call(t, subjects.KVPut, &pb.PutRequest{Key: "conflict"}, &pb.PutResponse{})
	if err == nil || err.Code() != 409 || !errors.Is(err, apierr.ReasonRevisionMismatch) || err.Message != "key conflict is at revision 9, not 3" {
		t.Errorf("shard's 409 came back as %#v", err)
	}

	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	hdr := nats.Header{}
	hdr["traceparent"] = []string{tp}
	e.request(t, subjects.KVDelete, hdr, must(proto.Marshal(&pb.DeleteRequest{Key: "traced"})))
	if got := shards[want.Get("traced")].traceparent.Load(); got != tp {
		t.Errorf("shard saw traceparent %q, want %q", got, tp)
	}
}

// TestShardWithoutInstance expects a prompt 503 naming the shard, and no
// rehashing of its keys to the shards that are up.
func TestShardWithoutInstance(t *testing.T) {
	e := newEnv(t, 3)
	e.serveShard(t, "0", nil)
	e.serveShard(t, "1", nil)
	m := consistenthash.New(ids(3))
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprint("k", i); m.Get(k) == "2" {
			key = k
		}
	}
	err := e.call(t, subjects.KVGet, &pb.GetRequest{Key: key}, &pb.GetResponse{})
	if err == nil || err.Code() != 503 || err.Message != "shard 2 is unavailable: no storage instance serves it" {
		t.Fatalf("get of a key on shard 2 without instances: %#v", err)
	}
}

// TestScan pages through 3 shards with `after` and checks order, page
// sizes and `more`; a failing shard fails the whole scan.
func TestScan(t *testing.T) {
	e := newEnv(t, 3)
	m := consistenthash.New(ids(3))
	perShard := map[string][]*pb.Item{}
	var all []*pb.Item
	for i := range 100 {
		for _, p := range []string{"k", "other"} {
			it := &pb.Item{Key: fmt.Sprintf("%s%03d", p, i), Value: []byte("v"), Revision: uint64(i + 1)}
			perShard[m.Get(it.Key)] = append(perShard[m.Get(it.Key)], it)
			if p == "k" {
				all = append(all, it)
			}
		}
	}
	var shards []*testShard
	for _, id := range ids(3) {
		items := perShard[id]
		slices.SortFunc(items, func(a, b *pb.Item) int { return strings.Compare(a.Key, b.Key) })
		shards = append(shards, e.serveShard(t, id, items))
	}
	want := sortedKeys(all)

	// paginate reads the whole prefix "k" with `after`. Unless shards cut
	// their pages short, every page but the last is full.
	paginate := func(limit uint32, full bool) {
		t.Helper()
		size := int(limit)
		if limit == 0 {
			size = 100
		}
		var got []string
		after := ""
		for page := 0; ; page++ {
			out := &pb.ScanResponse{}
			if err := e.call(t, subjects.KVScan, &pb.ScanRequest{Prefix: "k", Limit: limit, After: after}, out); err != nil {
				t.Fatal(err)
			}
			n := len(out.Items)
			if n == 0 || n > size || (full && n != min(size, len(want)-len(got))) {
				t.Fatalf("limit %d page %d: %d items (%d of %d read before)", limit, page, n, len(got), len(want))
			}
			for _, it := range out.Items {
				got = append(got, it.Key)
			}
			if out.More != (len(got) < len(want)) {
				t.Fatalf("limit %d page %d: more=%v with %d of %d keys read", limit, page, out.More, len(got), len(want))
			}
			if !out.More {
				break
			}
			after = got[len(got)-1]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("limit %d: scanned %v, want %v", limit, got, want)
		}
	}
	for _, limit := range []uint32{7, 50, 0, 1000} {
		paginate(limit, true)
	}
	// Shards whose pages end early (their byte budget) must not make the
	// merge skip the keys they held back.
	shards[0].pageCap.Store(2)
	shards[2].pageCap.Store(5)
	for _, limit := range []uint32{7, 50} {
		paginate(limit, false)
	}
	shards[0].pageCap.Store(0)
	shards[2].pageCap.Store(0)

	shards[1].fail.Store(true)
	err := e.call(t, subjects.KVScan, &pb.ScanRequest{Prefix: "k"}, &pb.ScanResponse{})
	if err == nil || err.Code() != 503 || err.Message != "shard 1 storage is down" {
		t.Errorf("scan with a failing shard: %#v", err)
	}
}

// TestScanBudget merges pages of large values: the merged page must stay
// under the server's max_payload (1 MB here), in protobuf and in JSON.
func TestScanBudget(t *testing.T) {
	e := newEnv(t, 3)
	var want []string
	for s, id := range ids(3) {
		var items []*pb.Item
		for i := range 3 {
			it := &pb.Item{Key: fmt.Sprintf("b%d%d", i, s), Value: make([]byte, 200<<10), Revision: 1}
			items = append(items, it)
			want = append(want, it.Key)
		}
		e.serveShard(t, id, items).pageCap.Store(3)
	}
	slices.Sort(want)
	for _, asJSON := range []bool{false, true} {
		var got []string
		after := ""
		for page := 0; page < 10; page++ {
			in := &pb.ScanRequest{Prefix: "b", After: after}
			body := must(proto.Marshal(in))
			if asJSON {
				body = must(protojson.Marshal(in))
			}
			reply := e.request(t, subjects.KVScan, nil, body)
			if code := reply.Header.Get(apierr.HeaderCode); code != "" {
				t.Fatalf("json=%v page %d: %s %s", asJSON, page, code, reply.Header.Get(apierr.HeaderMessage))
			}
			out := &pb.ScanResponse{}
			if asJSON {
				must(0, protojson.Unmarshal(reply.Data, out))
			} else {
				must(0, proto.Unmarshal(reply.Data, out))
			}
			if len(reply.Data) > 1<<20 || len(out.Items) == 0 {
				t.Fatalf("json=%v page %d: %d bytes, %d items", asJSON, page, len(reply.Data), len(out.Items))
			}
			for _, it := range out.Items {
				got = append(got, it.Key)
			}
			if !out.More {
				break
			}
			after = got[len(got)-1]
		}
		if !slices.Equal(got, want) {
			t.Errorf("json=%v: scanned %v, want %v", asJSON, got, want)
		}
	}
}
