package natstest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Verdict classifies one read sent to the isolated side of a cut.
type Verdict int

const (
	// Fresh: the answer holds every write acknowledged before the read.
	Fresh Verdict = iota
	// Refused: an error reply (a 503), which a linearizable read may give
	// when it cannot reach a quorum.
	Refused
	// TimedOut: no reply before the caller's deadline.
	TimedOut
	// Erred: an error reply other than a 503. Not stale, but not an
	// answer a read may give either.
	Erred
	// Stale: the answer misses a write acknowledged before the read began:
	// a linearizability violation.
	Stale
)

func (v Verdict) String() string {
	switch v {
	case Fresh:
		return "fresh"
	case Refused:
		return "refused"
	case TimedOut:
		return "timed out"
	case Erred:
		return "other error"
	case Stale:
		return "STALE"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// EdgeReads is what ReadAtEdge counted.
type EdgeReads struct {
	// Total reads made; AtEdge those begun while the isolated node still
	// believed it led (the only reads that can catch a deposed leader
	// answering alone).
	Total, AtEdge int
	// Counts by verdict, over all reads.
	Counts map[Verdict]int
	// StaleAnswers describes the first few stale answers, and
	// ErrorAnswers the first few Erred ones.
	StaleAnswers, ErrorAnswers []string
	// Claimed is how long into the loop the node was last seen claiming
	// leadership; Elapsed how long the loop ran.
	Claimed, Elapsed time.Duration
}

// String summarises the counts for a test log.
func (e EdgeReads) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d reads, %d while the isolated node claimed leadership (for %s of %s):",
		e.Total, e.AtEdge, e.Claimed.Round(time.Millisecond), e.Elapsed.Round(time.Millisecond))
	for _, v := range []Verdict{Fresh, Refused, TimedOut, Erred, Stale} {
		fmt.Fprintf(&b, " %s %d", v, e.Counts[v])
	}
	return b.String()
}

// afterStepDown is how long ReadAtEdge keeps reading once the isolated
// node stopped claiming leadership: reads around the step-down itself are
// edge cases too.
const afterStepDown = 500 * time.Millisecond

// ReadAtEdge calls read again and again until the isolated node has not
// claimed leadership for a moment (it stepped down, so the window in which
// it could answer alone has closed) or deadline passes, and counts the
// verdicts. claims is asked before every read, so AtEdge counts reads that
// began while the node still believed it led. read returns its verdict and,
// for a stale or erred one, what it saw.
func ReadAtEdge(deadline time.Time, claims func() bool, read func() (Verdict, string)) EdgeReads {
	e := EdgeReads{Counts: map[Verdict]int{}}
	start := time.Now()
	var downSince time.Time
	for time.Now().Before(deadline) {
		claimed := claims()
		switch {
		case claimed:
			downSince = time.Time{}
			e.Claimed = time.Since(start)
		case downSince.IsZero():
			downSince = time.Now()
		case time.Since(downSince) > afterStepDown:
			e.Elapsed = time.Since(start)
			return e
		}
		v, detail := read()
		e.Total++
		if claimed {
			e.AtEdge++
		}
		e.Counts[v]++
		note := func(to *[]string) {
			if len(*to) < 5 {
				*to = append(*to, fmt.Sprintf("at %s (leader claimed: %v): %s", time.Since(start).Round(time.Millisecond), claimed, detail))
			}
		}
		switch v {
		case Stale:
			note(&e.StaleAnswers)
		case Erred:
			note(&e.ErrorAnswers)
		}
	}
	e.Elapsed = time.Since(start)
	return e
}

// Require fails t unless every read of what (e.g. "kv.get") through the
// isolated node was fresh or a 503, and at least one began while node
// still claimed leadership. wait and deadline are the reply wait and the
// service deadline the reads used, for the message about a hang.
func (e EdgeReads) Require(t testing.TB, what, node string, wait, deadline time.Duration) {
	t.Helper()
	for _, s := range e.StaleAnswers {
		t.Errorf("%s through the isolated old leader answered stale: %s", what, s)
	}
	if n := e.Counts[Stale]; n > 0 {
		t.Errorf("%s: %d of %d reads through the isolated old leader missed a write acknowledged before they began", what, n, e.Total)
	}
	for _, s := range e.ErrorAnswers {
		t.Errorf("%s through the isolated old leader answered an error other than 503: %s", what, s)
	}
	if n := e.Counts[Erred]; n > 0 {
		// docs/API.md: a read that cannot have a quorum in time is a 503.
		t.Errorf("%s: %d of %d reads through the isolated old leader answered an error other than 503", what, n, e.Total)
	}
	if n := e.Counts[TimedOut]; n > 0 {
		// docs/API.md: never a hang; a read without a quorum is a 503.
		t.Errorf("%s: %d of %d reads through the isolated old leader got no reply within %s of a %s deadline", what, n, e.Total, wait, deadline)
	}
	if e.AtEdge == 0 {
		t.Errorf("%s: no read began while %s still claimed leadership; the test did not reach the edge", what, node)
	}
}
