package storage

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go"
)

// TestRefusedWriteThatWasStored: JetStream has answered "wrong last
// sequence" for writes it had in fact stored (at partition heals). The
// write loop must then recognise its own message by its write id and
// answer with that revision, neither writing again nor refusing. The
// refusal is provoked here by a stale base; the stored message carries
// the id this write is about to use, as the stored-but-refused write would.
func TestRefusedWriteThatWasStored(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, nc, Config{Shards: []string{"0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	sh := s.shards[0]

	next := sh.instance + "-" + strconv.FormatUint(sh.writes.Load()+1, 36)
	msg := &nats.Msg{Subject: sh.subjPfx + encodeKey("k"), Header: nats.Header{}, Data: []byte("mine")}
	msg.Header.Set(hdrWriteID, next)
	ack, err := sh.js.PublishMsg(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.sync(ctx); err != nil {
		t.Fatal(err)
	}
	sh.view.pending["k"] = base{seq: ack.Sequence + 1000, live: true} // a stale guess: the publish is refused
	res, err := sh.apply(ctx, &write{key: "k", value: []byte("mine")})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if res.seq != ack.Sequence || !res.wrote {
		t.Fatalf("apply = %+v; want the stored write's revision %d", res, ack.Sequence)
	}
	b, err := sh.leaderRead(ctx, "k")
	if err != nil || b.seq != ack.Sequence {
		t.Fatalf("key after apply: %+v, %v; want still revision %d (not written twice)", b, err, ack.Sequence)
	}
}

// TestRefusedWriteReplacedBeforeReread: the stored-but-refused write of
// TestRefusedWriteThatWasStored, but another writer replaced it before the
// write loop re-read the key, so the write id is gone with it. Nothing then
// shows whether this write was stored: retrying a put would apply it twice
// and refusing a CAS would deny a write that happened, so both must answer
// 503 (outcome unknown) and write nothing. Here, as at a partition heal, the
// refusal names a last sequence below the write's base (a deposed leader's
// stale answer), which does not rule out that the real leader stored it.
func TestRefusedWriteReplacedBeforeReread(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, nc, Config{Shards: []string{"0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	sh := s.shards[0]

	for i, w := range []*write{
		{key: "put", value: []byte("mine")},
		{key: "cas", value: []byte("mine"), expected: new(uint64)}, // expects the base below
	} {
		subj := sh.subjPfx + encodeKey(w.key)
		next := sh.instance + "-" + strconv.FormatUint(sh.writes.Load()+1, 36)
		mine := &nats.Msg{Subject: subj, Header: nats.Header{}, Data: []byte("mine")}
		mine.Header.Set(hdrWriteID, next)
		mine.Header.Set(hdrExpectSubj, "0")
		ack, err := sh.js.PublishMsg(ctx, mine)
		if err != nil {
			t.Fatal(err)
		}
		theirs := &nats.Msg{Subject: subj, Header: nats.Header{}, Data: []byte("theirs")}
		theirs.Header.Set(hdrWriteID, "another-instance-"+strconv.Itoa(i))
		theirs.Header.Set(hdrExpectSubj, strconv.FormatUint(ack.Sequence, 10))
		ack, err = sh.js.PublishMsg(ctx, theirs)
		if err != nil {
			t.Fatal(err)
		}
		if err := sh.sync(ctx); err != nil {
			t.Fatal(err)
		}
		// A base ahead of the key: the refusal names a lower last sequence.
		ahead := ack.Sequence + 1000
		sh.view.pending[w.key] = base{seq: ahead, rev: ahead, live: true}
		if w.expected != nil {
			*w.expected = ahead
		}
		res, err := sh.apply(ctx, w)
		if err == nil || apierr.From(err).Code() != 503 {
			t.Fatalf("%s: apply = %+v, %v; want a 503: the write may have been stored and replaced", w.key, res, err)
		}
		b, err := sh.leaderRead(ctx, w.key)
		if err != nil || b.seq != ack.Sequence || string(b.value) != "theirs" {
			t.Fatalf("%s: key after apply: %+v, %v; want still the other writer's revision %d (nothing written again)", w.key, b, err, ack.Sequence)
		}
	}
}
