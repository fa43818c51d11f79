package router

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// kv.scan (docs/ARCHITECTURE.md, "Reads" and "Resharding"). Every shard
// answers a page from a view that has applied a barrier published after
// the scan began, so each page holds every write its shard acknowledged
// before then. While no move runs, a key lives on exactly one shard of the
// map and the pages are merged in key order (merge).
//
// While a move runs (or an aborted one gives its keys back), a key k lives
// on its old owner S = hash(k) until the mover's moved marker there, and
// on its new owner T = target(k) from the copy the mover writes after the
// marker: one chain of messages, S's then T's (then S's again, for a key
// an abort brings back), with the revision growing along it. The router
// asks every shard of both sets, and a shard names, besides the keys it
// serves, the keys of its page's range it handed over and no longer serves
// (HeaderScanHandedOver, storage's view.scan). For each key only S's and
// T's answers count (any other shard holds what an earlier move left):
//
//   - listed by S or T: that value was the chain's end at that shard's
//     barrier, so it is current as of a moment after the scan began; when
//     both list it, the higher revision is the later one;
//   - listed by neither, handed over by one: the value is on its way, or
//     arrived after the other shard's barrier; a linearizable get, routed
//     like any get that meets a moved key (callMoving, with the hand-over
//     header), answers it, or 503 handover until the copy lands;
//   - neither: the key held no value at S's barrier and none on T can be
//     older than the scan (a copy comes only after a marker on S), so it
//     is left out.
//
// All of that holds only if the router's map was the deployment's when the
// shards took their pages: a router that had not seen a move start (or
// flip) would ask the wrong shards. So after the pages the router reads the
// map record from its stream leader; if it changed in any way that matters
// here (epoch, set, move target) the router installs it and scans again.
// A move changes the record before its first marker, so a record unchanged
// after the pages means no marker of a newer move is in them.

// scanSlack keeps a merged scan page this far under the server's
// max_payload, as storage does for its own pages.
const scanSlack = 64 << 10

// scanMapChecks bounds how often one scan starts again because the shard
// map changed under it.
const scanMapChecks = 3

// scanLookups bounds the gets one scan page runs at once for handed-over
// keys whose new shard's page did not list them.
const scanLookups = 16

// scan answers kv.scan: one page, merged from every shard's.
func (s *Server) scan(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.ScanRequest{}
	if err := decodeCheck(r, in, s.max); err != nil {
		return nil, err
	}
	limit, _ := limits.ScanLimit(in.Limit)
	in.Limit = uint32(limit)
	budget := int(s.nc.MaxPayload()) - scanSlack
	size := protoSize
	if r.JSON {
		size = jsonSize
	}
	if dl, ok := ctx.Deadline(); ok {
		// Looking up a key whose copy has not landed retries until the
		// deadline: keep back enough that the 503 reaches the caller
		// before it gives up (as call does for one shard request).
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-min(time.Until(dl)/20, 100*time.Millisecond)))
		defer cancel()
	}
	for attempt := 1; ; attempt++ {
		route := s.route.Load()
		page, err := s.scanWith(ctx, route, in, limit, budget, size)
		if err != nil {
			return nil, err
		}
		m, err := s.leaderMap(ctx)
		if err != nil {
			return nil, err
		}
		if sameScanShape(route, m) {
			return page, nil
		}
		s.apply(m)
		if attempt == scanMapChecks {
			return nil, apierr.Errorf(apierr.ReasonHandover, "the shard set changed during the scan %d times in a row (now epoch %d); retry", attempt, m.Epoch)
		}
	}
}

// scanWith is one scan page under route.
func (s *Server) scanWith(ctx context.Context, route *routing, in *pb.ScanRequest, limit, budget int, size func(*pb.Item) int) (*pb.ScanResponse, error) {
	if route.target == nil {
		pages, err := s.scanShards(ctx, route.hash.Shards(), nil, in, false)
		if err != nil {
			return nil, err
		}
		return merge(pages, limit, budget, size), nil
	}
	ids := slices.Clone(route.hash.Shards())
	added := map[string]bool{}
	for _, id := range route.target.Shards() {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
			added[id] = true
		}
	}
	req := proto.CloneOf(in)
	for {
		pages, err := s.scanShards(ctx, ids, added, req, true)
		if err != nil {
			return nil, err
		}
		page, last, err := s.mergeMoving(ctx, route, ids, pages, limit, budget, size)
		if err != nil {
			return nil, err
		}
		// Every key the pages offered up to last was handed over and is
		// gone now: a page without items cannot say more (the caller has
		// no key to continue after), so go on from there.
		if len(page.Items) > 0 || !page.More {
			return page, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, apierr.Errorf(apierr.ReasonTimeout, "scan ran out of time after key %q while keys were being handed over: %v", last, err)
		}
		req.After = last
	}
}

// scanShards asks every shard in ids for the page in, at once. A failing
// shard fails the scan (a partial page would silently skip keys), except
// that a shard in optional that no storage instance serves (a move's new
// shard) counts as an empty page: what it holds arrived there after a
// marker its old shard names, and looking that up fails in its place.
func (s *Server) scanShards(ctx context.Context, ids []string, optional map[string]bool, in *pb.ScanRequest, report bool) ([]*pb.ScanResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make([]*pb.ScanResponse, len(ids))
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for i, id := range ids {
		pages[i] = &pb.ScanResponse{}
		wg.Go(func() {
			hdr := s.epochHeader(nil)
			if report {
				hdr.Set(shardfmt.HeaderScanHandedOver, "1")
			}
			err := s.call(ctx, id, "scan", in, pages[i], hdr)
			if err != nil && optional[id] && errors.Is(err, apierr.ReasonShardUnavailable) {
				pages[i], err = &pb.ScanResponse{}, nil
			}
			if err == nil && pages[i].More && len(pages[i].Items) == 0 && len(pages[i].HandedOver) == 0 {
				err = apierr.Errorf(apierr.ReasonBadShardPage, "shard %s answered a scan with more=true and no items", id)
			}
			if err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		})
	}
	wg.Wait()
	return pages, firstErr
}

// merge combines the shards' sorted pages into one page of at most limit
// items in key order, under budget bytes as measured by size (but at least
// one item). A shard that said more may hold keys after its last item that
// it did not send (its page hit the limit or its own byte budget), so the
// merge stops at the smallest such last key: nothing a shard withheld can
// be skipped, and the next page starts after the last key returned.
func merge(pages []*pb.ScanResponse, limit, budget int, size func(*pb.Item) int) *pb.ScanResponse {
	out := &pb.ScanResponse{}
	cutoff, bounded := "", false
	for _, p := range pages {
		if p.More && len(p.Items) > 0 {
			if last := p.Items[len(p.Items)-1].Key; !bounded || last < cutoff {
				cutoff, bounded = last, true
			}
		}
	}
	out.More = bounded
	pos := make([]int, len(pages))
	used := 0
	for {
		best := -1
		for i, p := range pages {
			if pos[i] < len(p.Items) && (best < 0 || p.Items[pos[i]].Key < pages[best].Items[pos[best]].Key) {
				best = i
			}
		}
		if best < 0 {
			return out
		}
		it := pages[best].Items[pos[best]]
		n := size(it)
		if (bounded && it.Key > cutoff) || len(out.Items) == limit || (len(out.Items) > 0 && used+n > budget) {
			out.More = true
			return out
		}
		used += n
		out.Items = append(out.Items, it)
		pos[best]++
	}
}

// scanKey is what the pages of a scan during a move say about one key.
type scanKey struct {
	item *pb.Item // the newest value listed by its old or new owner
	// handedBack: its new owner named it handed over (an aborted move
	// took it back), so its old owner is where to look it up.
	handedBack bool
}

// mergeMoving merges the pages ids answered during a move (see the top of
// this file) into one page of at most limit items under budget, looking up
// the handed-over keys that no page listed. last is the key up to which
// every key is decided: where a page that came out empty but with more
// continues.
func (s *Server) mergeMoving(ctx context.Context, route *routing, ids []string, pages []*pb.ScanResponse, limit, budget int, size func(*pb.Item) int) (out *pb.ScanResponse, last string, err error) {
	cutoff, bounded := "", false
	for _, p := range pages {
		if !p.More {
			continue
		}
		end := ""
		if n := len(p.Items); n > 0 {
			end = p.Items[n-1].Key
		}
		if n := len(p.HandedOver); n > 0 && p.HandedOver[n-1] > end {
			end = p.HandedOver[n-1]
		}
		if !bounded || end < cutoff {
			cutoff, bounded = end, true
		}
	}
	keys := map[string]*scanKey{}
	note := func(id, key string) *scanKey {
		if bounded && key > cutoff {
			return nil
		}
		if id != route.hash.Get(key) && id != route.target.Get(key) {
			return nil // left there by an earlier move
		}
		k := keys[key]
		if k == nil {
			k = &scanKey{}
			keys[key] = k
		}
		return k
	}
	for i, p := range pages {
		for _, it := range p.Items {
			if k := note(ids[i], it.Key); k != nil && (k.item == nil || it.Revision > k.item.Revision) {
				k.item = it
			}
		}
		for _, key := range p.HandedOver {
			if k := note(ids[i], key); k != nil && ids[i] != route.hash.Get(key) {
				k.handedBack = true
			}
		}
	}
	picked := slices.Sorted(maps.Keys(keys))
	truncated := len(picked) > limit
	if truncated {
		picked = picked[:limit]
	}
	if err := s.lookUpHandedOver(ctx, route, picked, keys); err != nil {
		return nil, "", err
	}
	out = &pb.ScanResponse{More: bounded || truncated}
	used := 0
	for _, key := range picked {
		it := keys[key].item
		if it == nil {
			continue // gone (deleted or expired on its new shard)
		}
		n := size(it)
		if len(out.Items) == limit || (len(out.Items) > 0 && used+n > budget) {
			out.More = true
			break
		}
		used += n
		out.Items = append(out.Items, it)
	}
	last = cutoff
	if truncated {
		last = picked[len(picked)-1]
	}
	return out, last, nil
}

// lookUpHandedOver fills in, with a linearizable get, every key of picked
// that was named handed over but listed by neither of its owners. The get
// starts where the key went (its new owner, or its old one for a key an
// abort took back) with the hand-over header, so a copy that has not
// landed is a 503 handover, retried within the caller's deadline.
func (s *Server) lookUpHandedOver(ctx context.Context, route *routing, picked []string, keys map[string]*scanKey) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
		slots    = make(chan struct{}, scanLookups)
	)
	for _, key := range picked {
		k := keys[key]
		if k.item != nil {
			continue
		}
		from, to := route.hash.Get(key), route.target.Get(key)
		id, handover := to, true
		switch {
		case from == to:
			id, handover = from, false // not moving: ask as any get would
		case k.handedBack:
			id = from
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-slots }()
			got := &pb.GetResponse{}
			if err := s.callMoving(ctx, route, key, id, "get", &pb.GetRequest{Key: key}, got, handover); err != nil {
				once.Do(func() { firstErr = err; cancel() })
				return
			}
			if got.Found {
				k.item = &pb.Item{Key: key, Value: got.Value, Revision: got.Revision}
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = apierr.From(ctx.Err())
	}
	return firstErr
}

// leaderMap reads the shard map record from its stream's leader: a scan's
// check that its routing was the deployment's while the shards answered.
func (s *Server) leaderMap(ctx context.Context) (*pb.ShardMap, error) {
	bucket := s.subj.MetaBucket()
	msg, found, err := jskv.LeaderGet(ctx, s.nc, "KV_"+bucket, "$KV."+bucket+"."+shardMapKey)
	if err != nil {
		return nil, apierr.From(err)
	}
	if !found || jskv.IsDeleteMarker(msg.Header) {
		return nil, apierr.Errorf(apierr.ReasonInternal, "the shard map record is gone from bucket %s", bucket)
	}
	m, err := parseMap(msg.Data, msg.Seq)
	if err != nil {
		return nil, apierr.Errorf(apierr.ReasonInternal, "bucket %s: %v", bucket, err)
	}
	return m, nil
}

// sameScanShape reports whether route asks the shards that record m
// would: the same epoch and set, and the same move target (a running move
// and an aborted one giving its keys back are scanned alike).
func sameScanShape(route *routing, m *pb.ShardMap) bool {
	if m.Epoch != route.epoch || !sameSet(route.hash.Shards(), m.Shards) {
		return false
	}
	var to []string
	if mo := m.Move; mo != nil && (running(mo) || unfinished(mo)) && len(mo.ToShards) > 0 {
		to = mo.ToShards
	}
	if route.target == nil || to == nil {
		return route.target == nil && to == nil
	}
	return sameSet(route.target.Shards(), to)
}

// protoSize and jsonSize estimate an item's share of a reply; JSON carries
// values as base64 and may escape every key byte.
func protoSize(it *pb.Item) int { return len(it.Key) + len(it.Value) + 24 }
func jsonSize(it *pb.Item) int  { return 6*len(it.Key) + (len(it.Value)+2)/3*4 + 64 }
