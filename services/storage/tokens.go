package storage

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/nats-io/nats.go/jetstream"
)

// tokenBound refuses fence tokens that the locker never issued. A token is
// the stream sequence of the acquiring write in the lock bucket, so every
// issued token is at most that stream's last sequence. Without this check
// a client could fence a key with a made-up huge token and lock every real
// holder out of it for good.
//
// The bound only grows, so it is cached: a token at or below it costs
// nothing, and only a token above it asks the lock stream's leader
// (STREAM.INFO), once per burst of such tokens.
type tokenBound struct {
	js     jetstream.JetStream
	stream string

	max atomic.Uint64
	mu  sync.Mutex // one STREAM.INFO at a time
}

func newTokenBound(js jetstream.JetStream, lockBucket string) *tokenBound {
	return &tokenBound{js: js, stream: "KV_" + lockBucket}
}

// check returns nil when token may have been issued, a 400 unknown_token
// when it cannot have been, and a 503 when the lock stream cannot say.
func (t *tokenBound) check(ctx context.Context, token uint64) error {
	if token <= t.max.Load() {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if token <= t.max.Load() {
		return nil
	}
	var last uint64
	s, err := t.js.Stream(ctx, t.stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// No locker ever ran here, so no token was ever issued.
	case err != nil:
		return unavailable("-", "reading the lock stream to check a fence token", err)
	default:
		last = s.CachedInfo().State.LastSeq
	}
	if last > t.max.Load() {
		t.max.Store(last)
	}
	if token > last {
		return apierr.Errorf(apierr.ReasonUnknownToken,
			"fence token %d was never issued: the lock service has issued tokens up to %d", token, last)
	}
	return nil
}
