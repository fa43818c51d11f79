package storage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/consistenthash"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// TestOwnershipRecordDecidesInStreamOrder writes, by hand, what the mover
// writes on a source shard: an ownership record that gives every key to
// shard 1, and a moved marker. Shard 0 must then refuse creates (moved or,
// when its view had not applied the record yet, handover) and never serve
// the refused create afterwards; keep serving a key written before the
// record; answer moved for a marked key and for absent ones; and a
// hand-over request for a key it has no message of is a 503 handover, not
// "absent". About 1 s.
func TestOwnershipRecordDecidesInStreamOrder(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pfx := "$KV." + subj.ShardBucket("0") + "."
	put(t, e.nc, &pb.PutRequest{Key: "old", Value: []byte("v")})
	put(t, e.nc, &pb.PutRequest{Key: "marked", Value: []byte("v")})

	// A key in the record's set must hash to "1": with one shard, all do.
	if consistenthash.New([]string{"1"}).Get("new") != "1" {
		t.Fatal("hash setup")
	}
	rec, _ := proto.Marshal(&pb.ShardMap{Epoch: 2, Shards: []string{"1"}})
	if _, err := js.Publish(ctx, pfx+shardfmt.OwnerToken, rec); err != nil {
		t.Fatal(err)
	}
	// A create right after the record: refused whichever check sees it.
	err = call(e.nc, "0", "put", &pb.PutRequest{Key: "new", Value: []byte("x")}, &pb.PutResponse{})
	if !errors.Is(err, apierr.ReasonMoved) && !errors.Is(err, apierr.ReasonHandover) {
		t.Fatalf("a create after the ownership record: %v, want 503 moved or handover", err)
	}
	for _, c := range []pb.Consistency{pb.Consistency_CONSISTENCY_LINEARIZABLE, pb.Consistency_CONSISTENCY_STALE} {
		if err := call(e.nc, "0", "get", &pb.GetRequest{Key: "new", Consistency: c}, &pb.GetResponse{}); !errors.Is(err, apierr.ReasonMoved) {
			t.Fatalf("get (%v) of a refused create: %v, want 503 moved", c, err)
		}
	}
	// Written before the record: still this shard's until handed over.
	if g := get(t, e.nc, "old", pb.Consistency_CONSISTENCY_LINEARIZABLE); !g.Found {
		t.Fatalf("a key written before the record: %v", g)
	}
	// The mover's marker on "marked", conditioned on its message.
	last, found, err := jskv.LeaderGet(ctx, e.nc, "KV_"+subj.ShardBucket("0"), pfx+jskv.EncodeKey("marked"))
	if err != nil || !found {
		t.Fatal(err)
	}
	h := nats.Header{}
	h.Set(jskv.HeaderKVOperation, "DEL")
	h.Set(shardfmt.HeaderMovedTo, "1")
	h.Set(shardfmt.HeaderRevision, "5")
	if _, err := jskv.PublishIfLast(ctx, js, pfx+jskv.EncodeKey("marked"), []byte("v"), h, last.Seq); err != nil {
		t.Fatal(err)
	}
	err = call(e.nc, "0", "put", &pb.PutRequest{Key: "marked", Value: []byte("late")}, &pb.PutResponse{})
	if !errors.Is(err, apierr.ReasonMoved) {
		t.Fatalf("a write on a moved key: %v, want 503 moved", err)
	}
	if err := call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "marked"}, &pb.DeleteResponse{}); !errors.Is(err, apierr.ReasonMoved) {
		t.Fatalf("a delete of a moved key: %v, want 503 moved", err)
	}
	var sc pb.ScanResponse
	if err := call(e.nc, "0", "scan", &pb.ScanRequest{}, &sc); err != nil || len(sc.Items) != 1 || sc.Items[0].Key != "old" {
		t.Fatalf("scan lists %v (%v), want only the key not handed over", sc.Items, err)
	}

	// A shard receiving keys: a hand-over request for a key with no
	// message waits (the copy may be on its way).
	hdr := nats.Header{}
	hdr.Set(shardfmt.HeaderHandover, "1")
	e.start("1")
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	defer hcancel()
	err = service.Call(hctx, e.nc, subj.Shard("1", "get"), hdr, &pb.GetRequest{Key: "new"}, &pb.GetResponse{})
	if !errors.Is(err, apierr.ReasonHandover) {
		t.Fatalf("a hand-over get of a key not copied yet: %v, want 503 handover", err)
	}
	err = service.Call(hctx, e.nc, subj.Shard("1", "put"), hdr, &pb.PutRequest{Key: "new", Value: []byte("y")}, &pb.PutResponse{})
	if !errors.Is(err, apierr.ReasonHandover) {
		t.Fatalf("a hand-over create of a key not copied yet: %v, want 503 handover", err)
	}
}
