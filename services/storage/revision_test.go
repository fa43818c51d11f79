package storage_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRevisionsArePerKeyAndCarried checks the per-key revision rules
// (revision.go) at the stream: a copied key keeps the revision in its
// Latchkey-Revision header, the next write goes above it, a stale revision
// never matches a newer version, and a floor record lifts every later
// write, also one on the server's expiry marker of a key written under the
// floor. About 3 s (one TTL expiry).
func TestRevisionsArePerKeyAndCarried(t *testing.T) {
	e := newEnv(t)
	e.start("0")
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pfx := "$KV." + subj.ShardBucket("0") + "."

	// With no floor and no copies, revisions are the stream sequences.
	r1 := put(t, e.nc, &pb.PutRequest{Key: "a", Value: []byte("1")})
	m, err := js.Stream(ctx, "KV_"+subj.ShardBucket("0"))
	if err != nil {
		t.Fatal(err)
	}
	last, err := m.GetLastMsgForSubject(ctx, pfx+jskv.EncodeKey("a"))
	if err != nil || last.Sequence != r1 {
		t.Fatalf("revision %d of a first write is not its stream sequence (%v, %v)", r1, last, err)
	}

	// The mover's steps, by hand: raise the floor, then copy key b with
	// the revision it had on another shard.
	const imported = 1_000_000
	if _, err := js.Publish(ctx, pfx+"=floor", []byte(strconv.Itoa(imported))); err != nil {
		t.Fatal(err)
	}
	h := nats.Header{}
	h.Set("Latchkey-Revision", strconv.Itoa(imported))
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: pfx + jskv.EncodeKey("b"), Header: h, Data: []byte("copied")})
	if err != nil {
		t.Fatal(err)
	}
	g := get(t, e.nc, "b", pb.Consistency_CONSISTENCY_LINEARIZABLE)
	if !g.Found || g.Revision != imported {
		t.Fatalf("copied key reads as %v, want revision %d", g, imported)
	}
	if s := get(t, e.nc, "b", pb.Consistency_CONSISTENCY_STALE); s.Revision != imported {
		t.Fatalf("the view gives the copied key revision %d, want %d", s.Revision, imported)
	}
	// Its stream sequence is a revision it never had: no match.
	var resp pb.PutResponse
	stale := ack.Sequence
	err = call(e.nc, "0", "put", &pb.PutRequest{Key: "b", Value: []byte("x"), ExpectedRevision: &stale}, &resp)
	if !errors.Is(err, apierr.ErrConflict) {
		t.Fatalf("a CAS on the copy's stream sequence %d: %v, want 409", stale, err)
	}
	exp := uint64(imported)
	rb := put(t, e.nc, &pb.PutRequest{Key: "b", Value: []byte("2"), ExpectedRevision: &exp})
	if rb <= imported {
		t.Fatalf("a write on a copied key at revision %d got revision %d", imported, rb)
	}
	// A key written before the floor, written again after it, goes above.
	if ra := put(t, e.nc, &pb.PutRequest{Key: "a", Value: []byte("2")}); ra <= imported {
		t.Fatalf("a write after the floor %d got revision %d", imported, ra)
	}
	// A TTL'd key under the floor expires (the server's marker carries no
	// revision); the write on the marker still goes above the old one.
	rc := put(t, e.nc, &pb.PutRequest{Key: "c", Value: []byte("1"), TtlMs: 1000})
	deadline := time.Now().Add(10 * time.Second)
	for get(t, e.nc, "c", pb.Consistency_CONSISTENCY_LINEARIZABLE).Found {
		if time.Now().After(deadline) {
			t.Fatal("the TTL'd key did not expire")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rc2 := put(t, e.nc, &pb.PutRequest{Key: "c", Value: []byte("2")}); rc2 <= rc {
		t.Fatalf("a write on an expiry marker got revision %d, not above the expired one's %d", rc2, rc)
	}
	// Deletes and scans report the same revisions.
	var del pb.DeleteResponse
	if err := call(e.nc, "0", "delete", &pb.DeleteRequest{Key: "b"}, &del); err != nil || del.Revision <= rb {
		t.Fatalf("delete of b: %v, revision %d, want above %d", err, del.Revision, rb)
	}
	var sc pb.ScanResponse
	if err := call(e.nc, "0", "scan", &pb.ScanRequest{Prefix: "a"}, &sc); err != nil || len(sc.Items) != 1 || sc.Items[0].Revision <= imported {
		t.Fatalf("scan: %v %v", &sc, err)
	}
}
