package storage

import (
	"context"
	"strconv"
	"testing"
	"time"

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
