package limits

import (
	"github.com/latchkey/latchkey/kit/apierr"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// Request applies the limits of docs/API.md to a decoded key-value
// request. The router calls it so bad input never reaches a shard; the
// shard calls it again because its subjects are reachable too.
func Request(m proto.Message, maxValue int) error {
	switch r := m.(type) {
	case *pb.GetRequest:
		if err := Key(KeyField, r.Key); err != nil {
			return err
		}
		if _, ok := pb.Consistency_name[int32(r.Consistency)]; !ok {
			return apierr.Errorf(apierr.ReasonInvalidConsistency,
				"consistency is %d; it must be CONSISTENCY_LINEARIZABLE (the default) or CONSISTENCY_STALE", r.Consistency)
		}
	case *pb.PutRequest:
		if err := Key(KeyField, r.Key); err != nil {
			return err
		}
		if err := Value(r.Value, maxValue); err != nil {
			return err
		}
		if err := TTL(r.TtlMs, true); err != nil {
			return err
		}
		if r.Fence != nil && r.TtlMs != 0 {
			// The TTL's expiry would erase the fence it records.
			return apierr.Errorf(apierr.ReasonFenceWithTTL,
				"a put cannot carry both fence and ttl_ms: the key's expiry would erase its fences")
		}
		return Fence(r.Fence)
	case *pb.DeleteRequest:
		if err := Key(KeyField, r.Key); err != nil {
			return err
		}
		return Fence(r.Fence)
	case *pb.ScanRequest:
		if err := Key(PrefixField, r.Prefix); err != nil {
			return err
		}
		if err := Key(AfterField, r.After); err != nil {
			return err
		}
		_, err := ScanLimit(r.Limit)
		return err
	default:
		return apierr.Errorf(apierr.ReasonUnknownRequest, "no limits are known for a %T", m)
	}
	return nil
}

// Fence checks an optional write fence: a valid lock name and a token from
// lock.acquire (tokens start at 1).
func Fence(f *pb.Fence) error {
	if f == nil {
		return nil
	}
	if err := LockName(FenceLockField, f.Lock); err != nil {
		return err
	}
	if f.Token == 0 {
		return apierr.Errorf(apierr.ReasonMissingFenceToken, "fence.token must be greater than 0 (a token from lock.acquire)")
	}
	return nil
}
