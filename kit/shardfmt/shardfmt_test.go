package shardfmt_test

import (
	"testing"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/nats-io/nats.go"
)

// A message's revision follows the precedence RevInfo documents: an
// absolute revision, then sequence plus offset, then (server markers only)
// sequence plus floor, then the sequence itself. Storage and the mover
// both read revisions this way, so a copied key keeps its revision.
func TestMessageRevision(t *testing.T) {
	hdr := func(kv ...string) nats.Header {
		h := nats.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, c := range []struct {
		name string
		h    nats.Header
		want uint64
	}{
		{"no headers", nil, 10},
		{"plain message", hdr(), 10},
		{"absolute wins", hdr(shardfmt.HeaderRevision, "77", shardfmt.HeaderRevisionOffset, "5"), 77},
		{"offset", hdr(shardfmt.HeaderRevisionOffset, "5"), 15},
		{"bad offset is ignored", hdr(shardfmt.HeaderRevisionOffset, "x"), 10},
		{"server marker takes the floor", hdr(jskv.HeaderMarkerReason, "MaxAge"), 1010},
		{"offset beats the floor", hdr(jskv.HeaderMarkerReason, "MaxAge", shardfmt.HeaderRevisionOffset, "2"), 12},
	} {
		if got := shardfmt.MessageRevision(10, c.h, 1000); got != c.want {
			t.Errorf("%s: revision %d, want %d", c.name, got, c.want)
		}
	}
}

func TestMovedToAndParseFloor(t *testing.T) {
	if got := shardfmt.MovedTo(nil); got != "" {
		t.Errorf("MovedTo(nil) = %q", got)
	}
	h := nats.Header{}
	h.Set(shardfmt.HeaderMovedTo, "3")
	if got := shardfmt.MovedTo(h); got != "3" {
		t.Errorf("MovedTo = %q, want 3", got)
	}
	if f, ok := shardfmt.ParseFloor([]byte("42")); !ok || f != 42 {
		t.Errorf("ParseFloor(42) = %d, %v", f, ok)
	}
	if _, ok := shardfmt.ParseFloor([]byte("-1")); ok {
		t.Error("ParseFloor(-1) accepted")
	}
}
