package natstest

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ExpiryPass is how often nats-server 2.15 runs its expiry pass while
// messages keep expiring (filestore.go resetAgeChk never fires sooner).
// Tests aim writes at a pass: a write still in flight when the pass checks
// its key is what the server's expiry marker can swallow.
const ExpiryPass = 250 * time.Millisecond

// ExpiryWatch records, from a stream itself, when each message was stored
// (the server's clock) and when the server's expiry markers arrived, by
// the last token of their subject.
type ExpiryWatch struct {
	mu      sync.Mutex
	stored  map[uint64]time.Time
	markers map[string]time.Time
}

// WatchExpiries follows stream from now on until the test ends.
func WatchExpiries(t testing.TB, js jetstream.JetStream, stream string) *ExpiryWatch {
	t.Helper()
	w := &ExpiryWatch{stored: map[uint64]time.Time{}, markers: map[string]time.Time{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.stored[md.Sequence.Stream] = md.Timestamp
		if m.Headers().Get("Nats-Marker-Reason") != "" {
			subj := m.Subject()
			w.markers[subj[strings.LastIndexByte(subj, '.')+1:]] = md.Timestamp
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return w
}

// StoredAt waits (up to 10 s) for the message at seq and returns when the
// server stored it.
func (w *ExpiryWatch) StoredAt(t testing.TB, seq uint64) time.Time {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		w.mu.Lock()
		ts, ok := w.stored[seq]
		w.mu.Unlock()
		if ok {
			return ts
		}
	}
	t.Fatalf("stream message %d never arrived", seq)
	return time.Time{}
}

// Marker returns when the latest expiry marker for the subject token
// arrived, if one did.
func (w *ExpiryWatch) Marker(token string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ts, ok := w.markers[token]
	return ts, ok
}

// AwaitMarker waits (up to 10 s) for an expiry marker for token.
func (w *ExpiryWatch) AwaitMarker(t testing.TB, token string) time.Time {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if ts, ok := w.Marker(token); ok {
			return ts
		}
	}
	t.Fatalf("no expiry marker for %s", token)
	return time.Time{}
}

// AbsDur is |d|.
func AbsDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
