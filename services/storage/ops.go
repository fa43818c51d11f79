package storage

import (
	"context"
	"errors"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/codec"
	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// Shard operations, as in subjects.Set.Shard.
const (
	OpGet    = "get"
	OpPut    = "put"
	OpDelete = "delete"
	OpScan   = "scan"
)

// scanBudgetSlack keeps a scan reply well under the server's max_payload.
const scanBudgetSlack = 64 << 10

func (sh *shard) endpoints(subj subjects.Set) []service.Endpoint {
	ops := []struct {
		op string
		fn service.Func
	}{{OpGet, sh.get}, {OpPut, sh.put}, {OpDelete, sh.delete}, {OpScan, sh.scan}}
	eps := make([]service.Endpoint, 0, len(ops))
	for _, o := range ops {
		eps = append(eps, service.Endpoint{
			Name:       "shard-" + sh.id + "-" + o.op,
			Subject:    subj.Shard(sh.id, o.op),
			Func:       sh.instrument(o.op, o.fn),
			QueueGroup: "latchkey-shard-" + sh.id,
		})
	}
	return eps
}

// DecodeRequest reads and validates the body of a shard request for op
// (OpGet, OpPut, OpDelete or OpScan) with the given value limit (0 means
// limits.DefaultMaxValue). Failures are *apierr.Error 400s and 413s.
func DecodeRequest(op string, data []byte, asJSON bool, maxValue int) (proto.Message, error) {
	if maxValue <= 0 {
		maxValue = limits.DefaultMaxValue
	}
	var m proto.Message
	switch op {
	case OpGet:
		m = &pb.GetRequest{}
	case OpPut:
		m = &pb.PutRequest{}
	case OpDelete:
		m = &pb.DeleteRequest{}
	case OpScan:
		m = &pb.ScanRequest{}
	default:
		return nil, apierr.Errorf(apierr.ReasonUnknownOp, "unknown shard operation %q", op)
	}
	if err := codec.Decode(data, asJSON, m); err != nil {
		return nil, err
	}
	return m, Validate(m, maxValue)
}

// Validate checks a decoded shard request against the API limits.
func Validate(m proto.Message, maxValue int) error { return limits.Request(m, maxValue) }

func (sh *shard) decode(ctx context.Context, req *service.Request, op string) (proto.Message, error) {
	m, err := DecodeRequest(op, req.Msg.Data, req.JSON, sh.maxValue)
	if err == nil {
		describe(ctx, m)
	}
	return m, err
}

func (sh *shard) get(ctx context.Context, req *service.Request) (proto.Message, error) {
	m, err := sh.decode(ctx, req, OpGet)
	if err != nil {
		return nil, err
	}
	r := m.(*pb.GetRequest)
	handover := isHandover(req)
	if r.Consistency == pb.Consistency_CONSISTENCY_STALE {
		if !sh.healthy.Load() || sh.lagging() {
			return nil, apierr.Errorf(apierr.ReasonViewStale,
				"shard %s: this instance's view is behind its stream; stale reads are refused until it catches up", sh.id)
		}
		return sh.answerFromView(r.Key, handover)
	}
	sh.linGets.Add(1)
	defer sh.linGets.Add(-1)
	if resp, ok, err := sh.getBatched(ctx, r.Key, handover); ok {
		return resp, err
	}
	b, point, err := sh.confirmedRead(ctx, r.Key)
	if errors.Is(err, apierr.ReasonContention) {
		// The key kept changing between read and confirmation: a barrier
		// behind the view proves a cut that does not depend on the key.
		if err = sh.sync(ctx); err != nil {
			return nil, err
		}
		return sh.answerFromView(r.Key, handover)
	}
	if err != nil {
		return nil, err
	}
	sh.view.remember(r.Key, b)
	// Ownership records are judged at the read point: the key's message,
	// or for an absent key the confirming barrier (handover.go).
	if b.seq != 0 {
		point = b.seq
	}
	if err := sh.settle(ctx, point); err != nil {
		return nil, err
	}
	if err := sh.verdict(r.Key, b, handover); err != nil {
		return nil, err
	}
	if !b.live {
		return &pb.GetResponse{Key: r.Key}, nil
	}
	return &pb.GetResponse{Found: true, Key: r.Key, Value: b.value, Revision: b.rev}, nil
}

// answerFromView answers a get from the view as it stands, ownership
// records included.
func (sh *shard) answerFromView(key string, handover bool) (*pb.GetResponse, error) {
	b := sh.view.lookup(key)
	if err := sh.verdict(key, b, handover); err != nil {
		return nil, err
	}
	if !b.live {
		return &pb.GetResponse{Key: key}, nil
	}
	return &pb.GetResponse{Found: true, Key: key, Value: b.value, Revision: b.rev}, nil
}

func (sh *shard) put(ctx context.Context, req *service.Request) (proto.Message, error) {
	m, err := sh.decode(ctx, req, OpPut)
	if err != nil {
		return nil, err
	}
	r := m.(*pb.PutRequest)
	if err := sh.checkToken(ctx, r.Fence); err != nil {
		return nil, err
	}
	res, err := sh.apply(ctx, &write{key: r.Key, value: r.Value, ttlMs: r.TtlMs, expected: r.ExpectedRevision, fence: r.Fence, handover: isHandover(req)})
	if err != nil {
		return nil, err
	}
	return &pb.PutResponse{Revision: res.rev}, nil
}

func (sh *shard) delete(ctx context.Context, req *service.Request) (proto.Message, error) {
	m, err := sh.decode(ctx, req, OpDelete)
	if err != nil {
		return nil, err
	}
	r := m.(*pb.DeleteRequest)
	if err := sh.checkToken(ctx, r.Fence); err != nil {
		return nil, err
	}
	res, err := sh.apply(ctx, &write{key: r.Key, del: true, expected: r.ExpectedRevision, fence: r.Fence, handover: isHandover(req)})
	if err != nil {
		return nil, err
	}
	return &pb.DeleteResponse{Deleted: res.wrote && res.was, Revision: res.rev}, nil
}

// checkToken refuses a fence whose token the locker never issued.
func (sh *shard) checkToken(ctx context.Context, f *pb.Fence) error {
	if f == nil || sh.unsafe.NoFenceBounds {
		return nil
	}
	return sh.tokens.check(ctx, f.Token)
}

func (sh *shard) scan(ctx context.Context, req *service.Request) (proto.Message, error) {
	m, err := sh.decode(ctx, req, OpScan)
	if err != nil {
		return nil, err
	}
	r := m.(*pb.ScanRequest)
	limit, _ := limits.ScanLimit(r.Limit)
	if err := sh.sync(ctx); err != nil {
		return nil, err
	}
	budget := int(sh.nc.MaxPayload()) - scanBudgetSlack
	if req.JSON {
		budget /= 2 // base64 values and escaped keys grow in protojson
	}
	report := req.Msg != nil && req.Msg.Header.Get(shardfmt.HeaderScanHandedOver) != ""
	items, handed, more := sh.view.scan(sh.id, r.Prefix, r.After, limit, budget, report)
	return &pb.ScanResponse{Items: items, More: more, HandedOver: handed}, nil
}

// batchedReadWait bounds how long a linearizable get waits for the view on
// the batched path before it falls back to its own leader read.
const batchedReadWait = time.Second

// getBatched answers a linearizable get from the view when the shard is
// busy, the way etcd's ReadIndex does: it waits for a barrier message
// published after the get arrived, and for the view to apply it. The view
// is then a prefix of the stream that holds every write acknowledged before
// the get began, so reading it is linearizable, and one barrier publish
// serves every get (and scan) that arrived while the previous one was in
// flight. When this get is the only one in flight and no barrier is, a
// confirmed leader read (confirmedRead) is as cheap and does not wait for
// the view's delivery, so ok is false and the caller reads that way; it is
// false too whenever the view cannot confirm itself in time. Either way the
// answer rests on a write a quorum committed after the get arrived.
func (sh *shard) getBatched(ctx context.Context, key string, handover bool) (resp *pb.GetResponse, ok bool, err error) {
	if !sh.healthy.Load() || (sh.linGets.Load() < 2 && !sh.barrier.busy()) {
		return nil, false, nil
	}
	wctx, cancel := context.WithTimeout(ctx, batchedReadWait)
	defer cancel()
	if err := sh.sync(wctx); err != nil {
		return nil, false, nil
	}
	sh.batchedReads.Add(1)
	resp, err = sh.answerFromView(key, handover)
	return resp, true, err
}
