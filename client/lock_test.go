package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// Lock behaviour against the real locker is in tests/lock_test.go; these
// check what the client sends and how it reacts to the locker's answers.

func TestAcquireOptionsOnTheWire(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	c := client.New(nc)
	got := capture(t, nc, "latchkey.lock.acquire", func() *pb.AcquireRequest { return &pb.AcquireRequest{} },
		&pb.AcquireResponse{Token: 7, TtlMs: 2000})
	ctx := context.Background()
	l, err := c.Acquire(ctx, "job", client.WithOwner("me"), client.WithLeaseTTL(1500*time.Millisecond+1), client.WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.Name != "job" || r.Owner != "me" || r.TtlMs != 1501 || r.WaitMs != 0 {
		t.Fatalf("request = %v", r)
	}
	if l.Token() != 7 || l.Name() != "job" || l.Err() != nil {
		t.Fatalf("lock = %d %q %v", l.Token(), l.Name(), l.Err())
	}
	if d := time.Until(l.Expires()); d <= 0 || d > 2*time.Second {
		t.Fatalf("local lease end in %s, want within the granted 2s", d)
	}
	// Without keep-alive the lock counts as lost when its lease ends.
	select {
	case <-l.Done():
		if !errors.Is(l.Err(), client.ErrLockLost) {
			t.Fatalf("Err = %v", l.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the lease ended")
	}

	if _, err := c.Acquire(ctx, "job", client.WithWait(3*time.Second), client.WithoutKeepAlive()); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.WaitMs <= 2900 || r.WaitMs > 3000 || r.Owner == "" || r.TtlMs != client.DefaultLeaseTTL.Milliseconds() {
		t.Fatalf("waiting request = %v", r)
	}
}

// TestKeepAliveStopsOnConflict: a renewal refused with 409 closes Done.
func TestKeepAliveStopsOnConflict(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	c := client.New(nc)
	capture(t, nc, "latchkey.lock.acquire", func() *pb.AcquireRequest { return &pb.AcquireRequest{} },
		&pb.AcquireResponse{Token: 9, TtlMs: 1000})
	renewals := make(chan uint64, 16)
	sub, err := nc.Subscribe("latchkey.lock.renew", func(m *nats.Msg) {
		req := &pb.RenewRequest{}
		_ = proto.Unmarshal(m.Data, req)
		renewals <- req.Token
		reply := &nats.Msg{Subject: m.Reply, Header: nats.Header{}}
		if len(renewals) > 1 { // the second renewal is refused
			reply.Header.Set(apierr.HeaderCode, "409")
			reply.Header.Set(apierr.HeaderMessage, "token 9 does not hold lock")
			reply.Data, _ = proto.Marshal(&pb.Error{Code: 409, Reason: string(apierr.ReasonNotHeld)})
		} else {
			reply.Data, _ = proto.Marshal(&pb.RenewResponse{TtlMs: 1000})
		}
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	l, err := c.Acquire(context.Background(), "k", client.WithLeaseTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after a refused renewal")
	}
	if tok := <-renewals; tok != 9 {
		t.Fatalf("renewed token %d, want 9", tok)
	}
	if err := l.Err(); !errors.Is(err, client.ErrLockLost) || !errors.Is(err, client.ErrConflict) {
		t.Fatalf("Err = %v", err)
	}
	if err := l.Release(context.Background()); !errors.Is(err, client.ErrLockLost) {
		t.Fatalf("Release of a lost lock = %v", err)
	}
}
