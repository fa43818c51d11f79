package locker

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// TestStoredButRefusedWritesAreRecognised: JetStream may store a publish
// and still answer it with an error (a partition heal answers 10071/10164
// for stored proposals) or not at all. The request's next read then finds
// its own write. Here that write is put in place just before the request,
// under the id the request is about to use, which is what the locker reads
// after such a refusal. Each endpoint must take the write as done: an
// acquire is granted (not lock_held, which would leave the caller's lease
// blocking everyone until it ran out), a renewal is not written twice, a
// release is not not_held.
func TestStoredButRefusedWritesAreRecognised(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, nc, Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	set := subjects.New("")
	call := func(endpoint string, req, resp proto.Message) error {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		return service.Call(cctx, nc, set.Public(endpoint), nil, req, resp)
	}
	// landed stores what the next request's write would have stored,
	// conditioned on the key's sequence prev, and returns its sequence.
	landed := func(t *testing.T, name string, rec *pb.LockRecord, op string, prev uint64) uint64 {
		t.Helper()
		next := s.id + "-" + strconv.FormatUint(s.writes.Load()+1, 36)
		hdr := nats.Header{jskv.HeaderWriteID: {next}}
		var data []byte
		if rec != nil {
			data, _ = proto.Marshal(rec)
			hdr.Set(jskv.HeaderTTL, jskv.TTLHeader(rec.TtlMs))
		} else {
			hdr.Set(jskv.HeaderKVOperation, op)
			hdr.Set(jskv.HeaderTTL, jskv.TTLHeader(MarkerTTL.Milliseconds()))
		}
		seq, err := jskv.PublishIfLast(ctx, s.js, s.subj+jskv.EncodeKey(name), data, hdr, prev)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	last := func(t *testing.T, name string) lease {
		t.Helper()
		l, err := s.read(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	acquire := func(t *testing.T, name string) *pb.AcquireResponse {
		t.Helper()
		resp := &pb.AcquireResponse{}
		if err := call(subjects.LockAcquire, &pb.AcquireRequest{Name: name, Owner: "a", TtlMs: 10000}, resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}

	t.Run("acquire", func(t *testing.T) {
		exp := time.Now().Add(10 * time.Second).UnixMilli()
		seq := landed(t, "acq", &pb.LockRecord{Owner: "a", TtlMs: 10000, ExpiresUnixMs: exp}, "", 0)
		got := acquire(t, "acq")
		if got.Token != seq {
			t.Fatalf("acquire answered token %d; its own stored write is at %d", got.Token, seq)
		}
	})
	t.Run("renew", func(t *testing.T) {
		tok := acquire(t, "ren").Token
		exp := time.Now().Add(10 * time.Second).UnixMilli()
		seq := landed(t, "ren", &pb.LockRecord{Owner: "a", TtlMs: 10000, ExpiresUnixMs: exp, Token: tok}, "", tok)
		resp := &pb.RenewResponse{}
		if err := call(subjects.LockRenew, &pb.RenewRequest{Name: "ren", Token: tok}, resp); err != nil {
			t.Fatal(err)
		}
		if l := last(t, "ren"); l.seq != seq || resp.TtlMs != 10000 {
			t.Fatalf("renewal: last sequence %d (its stored write %d), ttl %d", l.seq, seq, resp.TtlMs)
		}
	})
	t.Run("release", func(t *testing.T) {
		tok := acquire(t, "rel").Token
		landed(t, "rel", nil, "DEL", tok)
		err := call(subjects.LockRelease, &pb.ReleaseRequest{Name: "rel", Token: tok}, &pb.ReleaseResponse{})
		if err != nil {
			t.Fatalf("release whose marker the server stored: %v", err)
		}
	})
}
