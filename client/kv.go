package client

import (
	"context"
	"iter"
	"math"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
)

// Entry is one key with its value and revision. The revision grows with
// every change of the key; hand it to IfRevision for compare-and-set.
type Entry struct {
	Key      string
	Value    []byte
	Revision uint64
}

// GetOption configures Get.
type GetOption func(*pb.GetRequest)

// Stale lets Get answer from a shard replica's memory. It is the cheap
// path and may miss writes acknowledged shortly before the read; without
// it a Get sees every write acknowledged before it began.
func Stale() GetOption {
	return func(r *pb.GetRequest) { r.Consistency = pb.Consistency_CONSISTENCY_STALE }
}

// Get returns the entry stored under key. A missing key is an error that
// matches ErrNotFound, so callers cannot mistake it for an empty value.
func (c *Client) Get(ctx context.Context, key string, opts ...GetOption) (*Entry, error) {
	req := &pb.GetRequest{Key: key}
	for _, o := range opts {
		o(req)
	}
	resp := &pb.GetResponse{}
	if err := c.call(ctx, subjects.KVGet, req, resp); err != nil {
		return nil, err
	}
	if !resp.GetFound() {
		return nil, apierr.Errorf(apierr.ReasonNotFound, "key %q not found", key)
	}
	return &Entry{Key: key, Value: resp.GetValue(), Revision: resp.GetRevision()}, nil
}

// writeOptions collects WriteOptions before they become a request.
type writeOptions struct {
	expected *uint64
	ttl      time.Duration
	fence    *pb.Fence
}

// WriteOption configures Put and Delete.
type WriteOption func(*writeOptions)

// IfRevision makes the write compare-and-set: it succeeds only if the key's
// current revision is rev, and otherwise fails with ErrConflict and changes
// nothing. IfRevision(0) is IfAbsent.
func IfRevision(rev uint64) WriteOption {
	return func(o *writeOptions) { o.expected = &rev }
}

// IfAbsent makes a Put succeed only if the key does not exist (ErrConflict
// otherwise).
func IfAbsent() WriteOption { return IfRevision(0) }

// WithTTL makes the server remove the key d after the Put, even if every
// latchkey process is down by then. d must be at least one second; it is
// sent in whole milliseconds, rounded up. Put only: Delete refuses it.
func WithTTL(d time.Duration) WriteOption {
	return func(o *writeOptions) { o.ttl = d }
}

// WithFence makes the write refuse (ErrStaleFence, an ErrConflict) when
// the key was already written or deleted under a higher token of the same
// lock, so a holder that lost its lease cannot overwrite a newer holder.
// token is what the locker returned when the lock was acquired.
func WithFence(lock string, token uint64) WriteOption {
	return func(o *writeOptions) { o.fence = &pb.Fence{Lock: lock, Token: token} }
}

func collect(opts []WriteOption) *writeOptions {
	o := &writeOptions{}
	for _, f := range opts {
		f(o)
	}
	return o
}

// ttlMillis rounds up so a TTL is never shorter than asked for.
func ttlMillis(d time.Duration) int64 {
	if d <= 0 {
		return int64(d / time.Millisecond)
	}
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++
	}
	return int64(ms)
}

// Put stores value under key and returns the key's new revision.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...WriteOption) (uint64, error) {
	o := collect(opts)
	req := &pb.PutRequest{Key: key, Value: value, ExpectedRevision: o.expected, Fence: o.fence}
	if o.ttl != 0 {
		// A negative or sub-second TTL is passed on as is: the server's
		// 400 names the limit, the same sentence every client gets.
		req.TtlMs = ttlMillis(o.ttl)
		if req.TtlMs == 0 {
			req.TtlMs = -1
		}
	}
	resp := &pb.PutResponse{}
	if err := c.call(ctx, subjects.KVPut, req, resp); err != nil {
		return 0, err
	}
	return resp.GetRevision(), nil
}

// Delete removes key. deleted is false when the key was already absent
// (that is not an error); revision is the revision of the deletion, or
// the key's last known revision when nothing was deleted.
func (c *Client) Delete(ctx context.Context, key string, opts ...WriteOption) (deleted bool, revision uint64, err error) {
	o := collect(opts)
	if o.ttl != 0 {
		return false, 0, apierr.Errorf(apierr.ReasonTTLOnDelete, "WithTTL applies to Put only, not Delete")
	}
	req := &pb.DeleteRequest{Key: key, ExpectedRevision: o.expected, Fence: o.fence}
	resp := &pb.DeleteResponse{}
	if err := c.call(ctx, subjects.KVDelete, req, resp); err != nil {
		return false, 0, err
	}
	return resp.GetDeleted(), resp.GetRevision(), nil
}

// Page is one page of a scan: entries sorted by key, and whether more keys
// with the prefix follow the last one.
type Page struct {
	Items []Entry
	More  bool
}

// ScanOption configures Scan and ScanAll.
type ScanOption func(*pb.ScanRequest)

// After starts the scan after key (exclusive), usually the last key of the
// previous page.
func After(key string) ScanOption { return func(r *pb.ScanRequest) { r.After = key } }

// Limit sets the page size: at most n entries (default 100, at most 1000;
// larger values are refused with ErrInvalid).
func Limit(n int) ScanOption {
	return func(r *pb.ScanRequest) {
		switch {
		case n < 0:
			// Wrapping to a huge uint32 makes the server refuse it with
			// its own "at most 1000" sentence, instead of a silent default.
			r.Limit = math.MaxUint32
		case int64(n) > math.MaxUint32:
			r.Limit = math.MaxUint32
		default:
			r.Limit = uint32(n)
		}
	}
}

// Scan returns one page of the keys that start with prefix, in key order.
// An empty prefix scans every key.
func (c *Client) Scan(ctx context.Context, prefix string, opts ...ScanOption) (*Page, error) {
	req := &pb.ScanRequest{Prefix: prefix}
	for _, o := range opts {
		o(req)
	}
	return c.scan(ctx, req)
}

func (c *Client) scan(ctx context.Context, req *pb.ScanRequest) (*Page, error) {
	resp := &pb.ScanResponse{}
	if err := c.call(ctx, subjects.KVScan, req, resp); err != nil {
		return nil, err
	}
	p := &Page{Items: make([]Entry, 0, len(resp.GetItems())), More: resp.GetMore()}
	for _, it := range resp.GetItems() {
		p.Items = append(p.Items, Entry{Key: it.GetKey(), Value: it.GetValue(), Revision: it.GetRevision()})
	}
	return p, nil
}

// ScanAll iterates over every key that starts with prefix, in key order,
// fetching pages as it goes (Limit sets the page size, After the start).
// It is not a snapshot: keys written during the iteration may or may not
// appear, but no key is returned twice. Iteration stops at the first error,
// which is yielded with a zero Entry.
func (c *Client) ScanAll(ctx context.Context, prefix string, opts ...ScanOption) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		req := &pb.ScanRequest{Prefix: prefix}
		for _, o := range opts {
			o(req)
		}
		for {
			page, err := c.scan(ctx, req)
			if err != nil {
				yield(Entry{}, err)
				return
			}
			for _, e := range page.Items {
				if !yield(e, nil) {
					return
				}
			}
			if !page.More {
				return
			}
			if len(page.Items) == 0 {
				// Without a last key there is no way forward; looping
				// would ask for the same page for ever.
				yield(Entry{}, apierr.Errorf(apierr.ReasonEmptyPage, "scan of %q returned an empty page that claims more keys", prefix))
				return
			}
			req.After = page.Items[len(page.Items)-1].Key
		}
	}
}
