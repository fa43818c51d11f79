package storage

import (
	"encoding/base64"
	"errors"
	"strings"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// barrierToken is the subject token of barriers (jskv.BarrierToken).
const barrierToken = jskv.BarrierToken

// Fence bounds (docs/API.md): a key's fences travel in one header of every
// message written to it, and JetStream refuses headers over 64 KiB, so
// without a bound any client could make a key unwritable by fencing it
// with many long lock names.
const (
	MaxFenceLocks       = 32
	MaxFenceHeaderBytes = 8 << 10
)

// Headers written and read on every stored message.
const (
	hdrFences = shardfmt.HeaderFences // the stream format's (kit/shardfmt)
	// hdrWriteID names one write of one storage instance, so the instance
	// recognises its own message when JetStream refused a publish it had
	// in fact stored (seen at partition heals: 10164 for stored writes).
	hdrWriteID     = "Latchkey-Write-Id"
	hdrKVOperation = jskv.HeaderKVOperation
	hdrTTL         = jskv.HeaderTTL
	hdrExpectSubj  = jskv.HeaderExpectedLastSubjectSeq
	kvOpDelete     = "DEL"
)

// User keys may hold any character, but a KV subject token may not hold
// '.', '*', '>' or whitespace. Every key is therefore stored under
// jskv.EncodeKey, the unpadded URL-safe base64 of its bytes: one token from
// [A-Za-z0-9_-], reversible, and never empty because keys are never empty.
// The order of encoded tokens does not matter: the view sorts decoded keys.
func encodeKey(key string) string { return jskv.EncodeKey(key) }

var errNotKey = errors.New("subject token is not an encoded key")

func decodeKey(token string) (string, error) {
	if token == "" || token == barrierToken {
		return "", errNotKey
	}
	key, err := jskv.DecodeKey(token)
	if err != nil {
		return "", errNotKey
	}
	return key, nil
}

// isLive reports whether a stored message is a value rather than a delete
// marker, a purge marker, or a marker the server left when a TTL expired.
func isLive(h nats.Header) bool { return !jskv.IsDeleteMarker(h) }

// ttlSeconds turns ttl_ms into the whole seconds of a Nats-TTL header,
// rounding up: the server's expiry has second granularity and a key must
// never disappear before its ttl.
func ttlSeconds(ms int64) string { return jskv.TTLHeader(ms) }

// fences is the decoded Latchkey-Fences header of one stored message: the
// highest token per lock under which the key was written or deleted.
type fences map[string]uint64

// parseFences reads a Latchkey-Fences header. A header that cannot be read
// is an internal error: silently dropping it would drop the protection.
func parseFences(h string) (fences, error) {
	if h == "" {
		return nil, nil
	}
	raw, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		return nil, apierr.Errorf(apierr.ReasonBadFences, "stored fences header is not base64: %v", err)
	}
	fs := &pb.FenceSet{}
	if err := proto.Unmarshal(raw, fs); err != nil {
		return nil, apierr.Errorf(apierr.ReasonBadFences, "stored fences header is not a FenceSet: %v", err)
	}
	return fs.Tokens, nil
}

// formatFences is the inverse of parseFences; deterministic, so equal sets
// give equal headers.
func formatFences(f fences) string {
	if len(f) == 0 {
		return ""
	}
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.FenceSet{Tokens: f})
	return base64.StdEncoding.EncodeToString(raw)
}

// checkFence applies a write's fence to the key's stored fences. It returns
// the header the new message must carry, or a stale_fence conflict, or
// too_many_fences when a new lock would push the key past the bounds
// (unless bounded is false). An unfenced write carries the stored header
// forward unchanged, so a key at its bounds stays writable.
func checkFence(stored string, f *pb.Fence, bounded bool) (string, error) {
	if f == nil {
		return stored, nil
	}
	fs, err := parseFences(stored)
	if err != nil {
		return "", err
	}
	if cur := fs[f.Lock]; cur > f.Token {
		return "", apierr.Errorf(apierr.ReasonStaleFence,
			"stale fence: the key was written under token %d of lock %q, newer than token %d", cur, f.Lock, f.Token)
	} else if cur == f.Token {
		return stored, nil
	}
	next := make(fences, len(fs)+1)
	for k, v := range fs {
		next[k] = v
	}
	next[f.Lock] = f.Token
	h := formatFences(next)
	if _, known := fs[f.Lock]; bounded && !known && (len(next) > MaxFenceLocks || len(h) > MaxFenceHeaderBytes) {
		return "", apierr.Errorf(apierr.ReasonTooManyFences,
			"too many fences: the key already carries fences of %d locks (%d bytes); at most %d locks and %d bytes are kept, "+
				"so a write fenced by a new lock is refused (unfenced writes and the locks it carries still work)",
			len(fs), len(stored), MaxFenceLocks, MaxFenceHeaderBytes)
	}
	return h, nil
}

// fenceRaises reports whether writing under f would raise the stored token.
func fenceRaises(stored string, f *pb.Fence) bool {
	if f == nil {
		return false
	}
	fs, err := parseFences(stored)
	return err == nil && fs[f.Lock] < f.Token
}

// subjectToken returns the last token of a stored message's subject.
func subjectToken(subject string) string {
	if i := strings.LastIndexByte(subject, '.'); i >= 0 {
		return subject[i+1:]
	}
	return subject
}
