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
		if err := Key("key", r.Key, false); err != nil {
			return err
		}
		if _, ok := pb.Consistency_name[int32(r.Consistency)]; !ok {
			return apierr.Invalid("invalid_consistency",
				"consistency is %d; it must be CONSISTENCY_LINEARIZABLE (the default) or CONSISTENCY_STALE", r.Consistency)
		}
	case *pb.PutRequest:
		if err := Key("key", r.Key, false); err != nil {
			return err
		}
		if err := Value(r.Value, maxValue); err != nil {
			return err
		}
		if err := TTL("ttl_ms", r.TtlMs, true); err != nil {
			return err
		}
		if r.Fence != nil && r.TtlMs != 0 {
			// The TTL's expiry would erase the fence it records.
			return apierr.Invalid("fence_with_ttl",
				"a put cannot carry both fence and ttl_ms: the key's expiry would erase its fences")
		}
		return Fence(r.Fence)
	case *pb.DeleteRequest:
		if err := Key("key", r.Key, false); err != nil {
			return err
		}
		return Fence(r.Fence)
	case *pb.ScanRequest:
		if err := Key("prefix", r.Prefix, true); err != nil {
			return err
		}
		if err := Key("after", r.After, true); err != nil {
			return err
		}
		_, err := ScanLimit(r.Limit)
		return err
	default:
		return apierr.New(apierr.ErrInternal, "unknown_request", "no limits are known for a %T", m)
	}
	return nil
}

// Fence checks an optional write fence: a valid lock name and a token from
// lock.acquire (tokens start at 1).
func Fence(f *pb.Fence) error {
	if f == nil {
		return nil
	}
	if err := LockName("fence.lock", f.Lock); err != nil {
		return err
	}
	if f.Token == 0 {
		return apierr.Invalid("missing_fence_token", "fence.token must be greater than 0 (a token from lock.acquire)")
	}
	return nil
}
