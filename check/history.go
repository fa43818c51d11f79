package check

import (
	"encoding/json"
	"os"
	"sync"
	"time"
)

// Kind names an operation of the workload.
type Kind string

// Operation kinds recorded in a history.
const (
	KindGet      Kind = "get"       // linearizable get
	KindStaleGet Kind = "stale-get" // get with CONSISTENCY_STALE
	KindPut      Kind = "put"       // put; fenced when Token != 0
	KindCAS      Kind = "cas"       // put with expected_revision
	KindDel      Kind = "del"       // delete; fenced when Token != 0
	KindScan     Kind = "scan"
	KindAcquire  Kind = "acquire"
	KindRenew    Kind = "renew"
	KindRelease  Kind = "release"
	KindFinalGet Kind = "final-get" // the linearizable reads of the durability check
	KindTTLPut   Kind = "ttl-put"   // put with ttl_ms, on the TTL keys only
	KindTTLGet   Kind = "ttl-get"   // linearizable get of a TTL key
)

// Outcome is what the client knows about an operation's effect.
type Outcome int

// Outcomes. Failed is a definite refusal (409, 400: nothing changed);
// Unknown is a timeout or 503, after which a write may or may not have
// happened, now or later.
const (
	OK Outcome = iota
	Failed
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Item is one entry of a scan page.
type Item struct {
	Key   string
	Value string
	Rev   uint64
}

// Op is one recorded operation. Call and Return are offsets from the start
// of the run on one monotonic clock, so they order events across clients.
type Op struct {
	Client int
	Kind   Kind
	Key    string // key, or lock name for lock operations
	Value  string // put, cas: unique per write, so a read names its write
	// Expected is the expected revision of a cas.
	Expected uint64
	// Lock and Token: the fence of a put/del; for acquire the token
	// returned, for renew/release the token sent.
	Lock  string
	Token uint64
	// TTL is the lease asked for by acquire or renew, or a put's ttl_ms;
	// ValidUntil the offset until which the holder may rely on its lease:
	// counted from the invocation, since the grant happened no earlier.
	TTL        time.Duration
	ValidUntil time.Duration
	// Granted is the lease a renewal's answer granted.
	Granted time.Duration
	// Probe marks the operations of the edge workloads whose outcome a
	// check of its own judges (see edges.go): ProbeWritable.
	Probe string

	Prefix, After string // scan
	Limit         int    // scan

	Call, Return time.Duration
	Outcome      Outcome
	Reason       string // the error, when not OK
	Invalid      bool   // refused as malformed (400/413), not by a precondition

	Found  bool   // get: key present; del: deleted
	Result string // get: the value read
	Rev    uint64 // get, put, cas, del: the revision returned
	Items  []Item // scan
	More   bool   // scan
}

// recorder collects a history from many goroutines.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
}

func newRecorder() *recorder { return &recorder{start: time.Now()} }

// now is the offset from the start on the monotonic clock.
func (r *recorder) now() time.Duration { return time.Since(r.start) }

func (r *recorder) add(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// snapshot returns the operations recorded so far.
func (r *recorder) snapshot() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// writeHistory writes ops to path as JSON lines.
func writeHistory(path string, ops []Op) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, op := range ops {
		if err := enc.Encode(op); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
