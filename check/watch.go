package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/latchkey/latchkey/client"
)

// CheckWatch names the violations of the watch check (Config.Watch). It is
// not in AllChecks: a run without Config.Watch does not print it.
const CheckWatch = "watch"

// watchDrain bounds how long the watch is followed after the final reads
// for the events of the last writes. The drain ends as soon as every
// acknowledged change is covered; the bound is above the watcher's
// default silence (12s) so that a feed lost near the end is resumed.
const watchDrain = 15 * time.Second

// WatchEvent is one event the watch check's watcher delivered.
type WatchEvent struct {
	At    time.Duration // when it was received, on the history's clock
	Type  client.EventType
	Key   string
	Value string
	Rev   uint64
}

// watchRec follows one client.Watch on the run's namespace and keeps
// every event it delivers.
type watchRec struct {
	w      *client.Watcher
	done   chan struct{} // closed when the events channel closed
	mu     sync.Mutex
	events []WatchEvent
}

// startWatch starts the watch on the namespace. Its context is detached
// from the run's so that it ends only by stopWatch (or by itself, which is
// what the check looks for).
func (r *run) startWatch(ctx context.Context, c *client.Client) (*watchRec, error) {
	// A deployment just started may not serve watches on every shard yet
	// (503): retry for a while, as the workload's own first requests do.
	var w *client.Watcher
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if w, err = c.Watch(context.WithoutCancel(ctx), r.cfg.Namespace); err == nil {
			break
		}
		if !errors.Is(err, client.ErrUnavailable) || time.Now().After(deadline) {
			return nil, fmt.Errorf("starting the watch on %q: %w", r.cfg.Namespace, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	wr := &watchRec{w: w, done: make(chan struct{})}
	go func() {
		defer close(wr.done)
		for ev := range w.Events() {
			e := WatchEvent{At: r.rec.now(), Type: ev.Type, Key: ev.Key, Value: string(ev.Value), Rev: ev.Revision}
			wr.mu.Lock()
			wr.events = append(wr.events, e)
			wr.mu.Unlock()
		}
	}()
	return wr, nil
}

func (wr *watchRec) snapshot() []WatchEvent {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return slices.Clone(wr.events)
}

// stopWatch waits until the events cover every acknowledged change of the
// history (or watchDrain passes, or the watch ended by itself), then stops
// the watch. It returns the events and the error of a watch that ended by
// itself: a watch the checker did not stop must not end.
func (r *run) stopWatch(wr *watchRec) ([]WatchEvent, error) {
	ops := r.rec.snapshot()
	deadline := time.After(watchDrain)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
drain:
	for len(checkWatch(ops, wr.snapshot(), nil)) > 0 {
		select {
		case <-wr.done:
			break drain
		case <-deadline:
			break drain
		case <-tick.C:
		}
	}
	// Err is set only once the watch ended; after Stop it would be ours.
	var ended error
	select {
	case <-wr.done:
		ended = wr.w.Err()
	default:
	}
	wr.w.Stop()
	<-wr.done
	events := wr.snapshot()
	fmt.Fprintf(r.cfg.Progress, "watch: %d events, %d resumes, %d cancellations\n",
		len(events), wr.w.Resumes(), wr.w.Cancellations())
	return events, ended
}

// checkWatch checks the events of the watch against the history, per key:
// revisions strictly increase (a duplicate or a step back is a violation),
// and the last event's revision is at least the revision of the key's
// newest acknowledged change, because the feed promises every change (its
// own event, or after a resume at least the key's latest state). When that
// change was a put with ttl_ms and the key's final read (see lastReads)
// found it absent, the key expired (or an unknown delete removed it), and
// deletes and expiries are never skipped: the last event must not be a
// put. ended is the error of a watch that ended by itself.
func checkWatch(ops []Op, events []WatchEvent, ended error) []Violation {
	var vs []Violation
	if ended != nil {
		vs = append(vs, Violation{CheckWatch, fmt.Sprintf("the watch ended before the run stopped it: %v", ended)})
	}
	last := map[string]WatchEvent{}
	for _, e := range events {
		if p, seen := last[e.Key]; seen && e.Rev <= p.Rev {
			vs = append(vs, Violation{CheckWatch, fmt.Sprintf("key %q: %s event of revision %d at %.3fs after the %s event of revision %d at %.3fs",
				e.Key, e.Type, e.Rev, e.At.Seconds(), p.Type, p.Rev, p.At.Seconds())})
		}
		last[e.Key] = e
	}
	idx := indexWrites(ops)
	final := lastReads(ops)
	keys := make([]string, 0, len(idx))
	for k := range idx {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		w := idx[key]
		if len(w.changes) == 0 {
			continue
		}
		change := w.changes[len(w.changes)-1]
		e, seen := last[key]
		switch {
		case !seen:
			vs = append(vs, Violation{CheckWatch, fmt.Sprintf("key %q: no event, but a %s was acknowledged with revision %d at %s",
				key, change.Kind, change.Rev, at(change))})
		case e.Rev < change.Rev:
			vs = append(vs, Violation{CheckWatch, fmt.Sprintf("key %q: the last event is a %s of revision %d, but a %s was acknowledged with revision %d at %s",
				key, e.Type, e.Rev, change.Kind, change.Rev, at(change))})
		case change.TTL > 0 && e.Type == client.EventPut:
			if f, read := final[key]; read && !f.Found {
				vs = append(vs, Violation{CheckWatch, fmt.Sprintf("key %q: read absent at %s after the put with ttl_ms of revision %d, but the last event is a put of revision %d: no expiry event",
					key, at(f), change.Rev, e.Rev)})
			}
		}
	}
	return vs
}
