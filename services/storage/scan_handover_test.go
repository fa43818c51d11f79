package storage_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// TestScanNamesHandedOverKeys plants, by hand, what a move leaves on a
// source shard: moved markers (of a live and of a deleted key), then an
// ownership record giving every key away, then an acknowledged write on a
// key's message from before the record. A scan never lists any of them;
// asked with Latchkey-Scan-Handed-Over it names the two that may hold a
// value elsewhere (the live marker, the write after the record), counting
// them towards its limit, and never names the deleted one; asked without,
// it names nothing. About 1 s.
func TestScanNamesHandedOverKeys(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pfx := "$KV." + subj.ShardBucket("0") + "."
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		put(t, e.nc, &pb.PutRequest{Key: k, Value: []byte("v-" + k)})
	}
	del(t, e.nc, &pb.DeleteRequest{Key: "d"})
	mark := func(key string, live bool) {
		t.Helper()
		last, found, err := jskv.LeaderGet(ctx, e.nc, "KV_"+subj.ShardBucket("0"), pfx+jskv.EncodeKey(key))
		if err != nil || !found {
			t.Fatalf("read %s: %v %v", key, found, err)
		}
		h := nats.Header{}
		h.Set(jskv.HeaderKVOperation, "DEL")
		h.Set(shardfmt.HeaderMovedTo, "1")
		h.Set(shardfmt.HeaderRevision, "5")
		var body []byte
		if live {
			h.Set(shardfmt.HeaderMovedLive, "1")
			body = last.Data
		}
		if _, err := jskv.PublishIfLast(ctx, js, pfx+jskv.EncodeKey(key), body, h, last.Seq); err != nil {
			t.Fatal(err)
		}
	}
	mark("a", true)
	mark("d", false)
	rec, _ := proto.Marshal(&pb.ShardMap{Epoch: 2, Shards: []string{"1"}})
	if _, err := js.Publish(ctx, pfx+shardfmt.OwnerToken, rec); err != nil {
		t.Fatal(err)
	}
	// On a message older than the record: acknowledged, and from now on
	// the mover's to hand over (the shard answers it moved).
	put(t, e.nc, &pb.PutRequest{Key: "e", Value: []byte("late")})

	report := nats.Header{}
	report.Set(shardfmt.HeaderScanHandedOver, "1")
	scanWith := func(hdr nats.Header, after string, limit uint32) *pb.ScanResponse {
		t.Helper()
		resp := &pb.ScanResponse{}
		if err := service.Call(ctx, e.nc, subj.Shard("0", "scan"), hdr, &pb.ScanRequest{After: after, Limit: limit}, resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	keys := func(items []*pb.Item) []string {
		var out []string
		for _, it := range items {
			out = append(out, it.Key)
		}
		return out
	}
	if p := scanWith(nil, "", 0); !slices.Equal(keys(p.Items), []string{"b", "c"}) || len(p.HandedOver) != 0 || p.More {
		t.Fatalf("plain scan: items %v, handed over %v, more %v; want [b c], none, false", keys(p.Items), p.HandedOver, p.More)
	}
	if p := scanWith(report, "", 0); !slices.Equal(keys(p.Items), []string{"b", "c"}) || !slices.Equal(p.HandedOver, []string{"a", "e"}) || p.More {
		t.Fatalf("reporting scan: items %v, handed over %v, more %v; want [b c], [a e], false", keys(p.Items), p.HandedOver, p.More)
	}
	// Pages of two: a handed-over key takes a place like an item.
	p := scanWith(report, "", 2)
	if !slices.Equal(keys(p.Items), []string{"b"}) || !slices.Equal(p.HandedOver, []string{"a"}) || !p.More {
		t.Fatalf("first page of 2: items %v, handed over %v, more %v; want [b], [a], true", keys(p.Items), p.HandedOver, p.More)
	}
	p = scanWith(report, "b", 2)
	if !slices.Equal(keys(p.Items), []string{"c"}) || !slices.Equal(p.HandedOver, []string{"e"}) || p.More {
		t.Fatalf("second page of 2: items %v, handed over %v, more %v; want [c], [e], false", keys(p.Items), p.HandedOver, p.More)
	}
}
