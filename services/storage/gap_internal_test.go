package storage

import (
	"context"
	"testing"
)

// A view whose consumer fell behind never gets the messages deleted
// meanwhile: with History 1, a key's message goes when its next one lands.
// Here k's revision 2 (acknowledged) was deleted by revision 4 before the
// lagging consumer reached it, so the consumer delivers the barrier at 3
// while k still shows revision 1. A read behind barrier 3 must not answer
// from that view (it would miss revision 2, acknowledged before the
// barrier): the view is a consistent cut again only once the consumer has
// nothing pending (seen twice under process faults: a get and a scan
// 0.5-2 s after a storage instance's SIGSTOP ended, behind views that had
// stalled, returned values 13-19 s old).
func TestViewWithAGapIsNoCutUntilCaughtUp(t *testing.T) {
	v := newView()
	v.apply("k", true, 1, revInfo{}, false, false, false, false, 0, true, []byte("v1"), "")
	v.caughtUp(1)
	done, cancel := context.WithCancel(context.Background())
	cancel() // the waits below must decide at once
	if err := v.waitCut(done, 1); err != nil {
		t.Fatalf("a view that applied every message is no cut: %v", err)
	}
	// Revision 2 (k = v2) was deleted before delivery; the barrier at 3
	// comes with one message still pending.
	v.apply(barrierToken, false, 3, revInfo{}, false, false, false, false, 0, false, nil, "")
	if err := v.wait(done, 3); err != nil {
		t.Fatalf("applied sequence 3 not reached: %v", err)
	}
	if err := v.waitCut(done, 3); err == nil {
		b := v.lookup("k")
		t.Fatalf("the view counts as a cut at 3 past a gap, and would answer k = %q at revision %d, missing revision 2", b.value, b.rev)
	}
	v.apply("k", true, 4, revInfo{}, false, false, false, false, 0, true, []byte("v4"), "")
	v.caughtUp(4)
	if err := v.waitCut(done, 3); err != nil {
		t.Fatalf("a view caught up with the stream is no cut: %v", err)
	}
	if b := v.lookup("k"); string(b.value) != "v4" || b.rev != 4 {
		t.Fatalf("k = %q at revision %d, want v4 at 4", b.value, b.rev)
	}
	// A message older than the gap with nothing pending (a lagging second
	// consumer's) does not end it.
	v.apply("k", true, 7, revInfo{}, false, false, false, false, 0, true, []byte("v7"), "")
	v.caughtUp(5)
	if err := v.waitCut(done, 7); err == nil {
		t.Fatal("an older caught-up message ended a later gap")
	}
}
