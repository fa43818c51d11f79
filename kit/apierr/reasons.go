package apierr

// Reason is the stable, snake_case word an error reply carries in its
// body's reason field (docs/API.md lists them all). A Reason is itself an
// error, so a caller tells reasons apart with errors.Is(err, ReasonLockHeld)
// on any error that wraps an *Error, also one rebuilt from a reply.
//
// Every reason is defined here and nowhere else, and each one belongs to one
// kind (and so to one status code): the table below is the only place a
// reason meets its code. Renaming a reason changes the wire.
type Reason string

// Error makes a Reason usable as an errors.Is target.
func (r Reason) Error() string { return string(r) }

// Kind is the sentinel kind of r (ErrInvalid, ErrConflict, ...), or nil for
// reasons that have no fixed kind (ReasonUnspecified) or are no error at all
// (the watch end reasons).
func (r Reason) Kind() error { return reasonKinds[r] }

// The reasons of 400 replies (ErrInvalid).
const (
	ReasonMalformedBody Reason = "malformed_body" // the body does not decode as the request type
	// ReasonEncode: the caller could not encode its own request (the
	// client's side; a service that cannot encode its own shard request
	// answers ReasonInternal, a 500).
	ReasonEncode             Reason = "encode"
	ReasonEmptyKey           Reason = "empty_key"           // key is ""
	ReasonInvalidKey         Reason = "invalid_key"         // key is not valid UTF-8
	ReasonInvalidPrefix      Reason = "invalid_prefix"      // scan prefix is not valid UTF-8
	ReasonInvalidAfter       Reason = "invalid_after"       // scan after is not valid UTF-8
	ReasonEmptyName          Reason = "empty_name"          // lock name is ""
	ReasonInvalidName        Reason = "invalid_name"        // lock name is not valid UTF-8
	ReasonEmptyOwner         Reason = "empty_owner"         // lock owner is ""
	ReasonInvalidOwner       Reason = "invalid_owner"       // lock owner is not valid UTF-8
	ReasonEmptyFenceLock     Reason = "empty_fence_lock"    // fence.lock is "" (was empty_fence.lock)
	ReasonInvalidFenceLock   Reason = "invalid_fence_lock"  // fence.lock is not valid UTF-8 (was invalid_fence.lock)
	ReasonMissingFenceToken  Reason = "missing_fence_token" // fence.token is 0
	ReasonTTLTooShort        Reason = "ttl_ms_too_short"    // ttl_ms below 1000
	ReasonTTLTooLong         Reason = "ttl_ms_too_long"     // ttl_ms above one year
	ReasonLimitTooLarge      Reason = "limit_too_large"     // scan limit above 1000
	ReasonInvalidConsistency Reason = "invalid_consistency" // an unknown consistency level
	ReasonFenceWithTTL       Reason = "fence_with_ttl"      // a put with both fence and ttl_ms
	ReasonMissingToken       Reason = "missing_token"       // renew or release without a token
	ReasonInvalidWaitMs      Reason = "invalid_wait_ms"     // wait_ms outside 0..5 minutes
	ReasonTTLOnDelete        Reason = "ttl_on_delete"       // client.WithTTL given to Delete
	ReasonUnknownToken       Reason = "unknown_token"       // a fence token lock.acquire never issued
	ReasonUnknownOp          Reason = "unknown_op"          // a shard subject with an unknown operation
	ReasonPrefixAndKey       Reason = "prefix_and_key"      // a watch with both prefix and key
	ReasonInitialWithCursors Reason = "initial_with_cursors"
	ReasonUnknownShard       Reason = "unknown_shard"    // watch cursors name a shard not in the map
	ReasonInvalidWatchID     Reason = "invalid_watch_id" // a watch_id latchkey does not hand out
	ReasonInvalidDeliver     Reason = "invalid_deliver"  // a deliver subject outside _INBOX.
	ReasonInvalidCursor      Reason = "invalid_cursor"   // a cursor latchkey did not hand out
)

// The reasons of 404 replies (ErrNotFound).
const (
	ReasonNotFound  Reason = "not_found"  // the key is absent
	ReasonWatchGone Reason = "watch_gone" // a keepalive reached no feed of the watch
	// ReasonWatchResharded: a keepalive of a watch that lacks a shard a
	// move of the shard set added; resume, and the new shard's feed starts
	// from its stream's start.
	ReasonWatchResharded Reason = "watch_resharded"
)

// The reasons of 409 replies (ErrConflict): a precondition failed.
const (
	ReasonRevisionMismatch Reason = "revision_mismatch" // expected_revision does not match
	ReasonStaleFence       Reason = "stale_fence"       // a newer token of the fence's lock wrote the key
	ReasonLockHeld         Reason = "lock_held"         // someone else holds the lock
	ReasonNotHeld          Reason = "not_held"          // the token no longer holds the lock
	ReasonRenewTooLate     Reason = "renew_too_late"    // the lease ran out while the renewal was under way
	ReasonFencedKeyTTL     Reason = "fenced_key_ttl"    // ttl_ms on a key that carries fences
	ReasonTooManyFences    Reason = "too_many_fences"   // a 33rd lock fencing one key
	ReasonCursorExpired    Reason = "cursor_expired"    // a watch cursor the shard's stream no longer holds
	ReasonEpochMismatch    Reason = "epoch_mismatch"    // resharding: a stale expected_epoch
	ReasonMoveRunning      Reason = "move_running"      // resharding: a second move while one runs
)

// The reasons of 413 replies (ErrTooLarge).
const (
	ReasonKeyTooLong       Reason = "key_too_long"
	ReasonPrefixTooLong    Reason = "prefix_too_long" // a scan prefix
	ReasonAfterTooLong     Reason = "after_too_long"
	ReasonNameTooLong      Reason = "name_too_long"
	ReasonOwnerTooLong     Reason = "owner_too_long"
	ReasonFenceLockTooLong Reason = "fence_lock_too_long" // was fence.lock_too_long
	ReasonValueTooLarge    Reason = "value_too_large"
	ReasonWatchPrefixLarge Reason = "prefix_too_large" // a watch prefix
	ReasonReplyTooLarge    Reason = "reply_too_large"  // the reply would exceed max_payload
	ReasonTooLarge         Reason = "too_large"        // NATS refused a message for its size
)

// The reasons of 503 replies (ErrUnavailable): retry.
const (
	ReasonNoResponders     Reason = "no_responders"
	ReasonTimeout          Reason = "timeout"         // a deadline passed (context.DeadlineExceeded maps here)
	ReasonDeadlinePassed   Reason = "deadline_passed" // the request arrived after its caller's deadline; not carried out
	ReasonNATS             Reason = "nats"            // another NATS request failure
	ReasonContention       Reason = "contention"
	ReasonOverloaded       Reason = "overloaded"
	ReasonViewStale        Reason = "view_stale"
	ReasonViewBehind       Reason = "view_behind"
	ReasonNoQuorum         Reason = "no_quorum"
	ReasonExpiryPending    Reason = "expiry_pending"
	ReasonShuttingDown     Reason = "shutting_down" // also a watch end reason
	ReasonJetStream        Reason = "jetstream"
	ReasonJetStreamBusy    Reason = "jetstream_busy"
	ReasonJetStreamRead    Reason = "jetstream_read"
	ReasonJetStreamWrite   Reason = "jetstream_write"
	ReasonShardUnavailable Reason = "shard_unavailable"
	ReasonShardTimeout     Reason = "shard_timeout"
	// ReasonMoved: the shard handed the key over to another shard (a move
	// of the shard set); the router retries there.
	ReasonMoved Reason = "moved"
	// ReasonHandover: the key is between its old and its new shard.
	ReasonHandover Reason = "handover"
)

// The reasons of 500 replies (ErrInternal): a bug or corrupt data.
const (
	ReasonInternal       Reason = "internal" // an error no one classified
	ReasonMalformedReply Reason = "malformed_reply"
	ReasonBadFences      Reason = "bad_fences"     // a stored fences header that does not decode
	ReasonBadShardPage   Reason = "bad_shard_page" // a scan page with more=true and no items
	ReasonCorruptLock    Reason = "corrupt_lock"
	ReasonUnknownRequest Reason = "unknown_request"
	ReasonEmptyPage      Reason = "empty_page" // the client got an empty page that claims more
)

// ReasonUnspecified is the reason of an error whose reply named none, or of
// a plain error wrapping a kind: its kind is whatever the code says.
const ReasonUnspecified Reason = "error"

// The reasons a watch feed ends with: the reason of a CANCELLED event
// starts with one of these (and ReasonShuttingDown). They are no error
// replies, so they have no kind.
const (
	ReasonSlowConsumer     Reason = "slow_consumer"
	ReasonKeepaliveTimeout Reason = "keepalive_timeout"
	ReasonClientCancel     Reason = "client_cancel"
	ReasonEventConnection  Reason = "event_connection"
)

// ReasonShardUnserved is the reason a shard move reports (admin.shards.get)
// while no storage instance serves its new shard; no error reply, no kind.
const ReasonShardUnserved Reason = "shard_unserved"

// reasonKinds is the one mapping from a reason to its kind, and through
// codes to its status code.
var reasonKinds = map[Reason]error{}

func init() {
	for kind, rs := range map[error][]Reason{
		ErrInvalid: {ReasonMalformedBody, ReasonEncode, ReasonEmptyKey, ReasonInvalidKey, ReasonInvalidPrefix,
			ReasonInvalidAfter, ReasonEmptyName, ReasonInvalidName, ReasonEmptyOwner, ReasonInvalidOwner,
			ReasonEmptyFenceLock, ReasonInvalidFenceLock, ReasonMissingFenceToken, ReasonTTLTooShort,
			ReasonTTLTooLong, ReasonLimitTooLarge, ReasonInvalidConsistency, ReasonFenceWithTTL,
			ReasonMissingToken, ReasonInvalidWaitMs, ReasonTTLOnDelete, ReasonUnknownToken, ReasonUnknownOp,
			ReasonPrefixAndKey, ReasonInitialWithCursors, ReasonUnknownShard, ReasonInvalidWatchID,
			ReasonInvalidDeliver, ReasonInvalidCursor},
		ErrNotFound: {ReasonNotFound, ReasonWatchGone, ReasonWatchResharded},
		ErrConflict: {ReasonRevisionMismatch, ReasonStaleFence, ReasonLockHeld, ReasonNotHeld,
			ReasonRenewTooLate, ReasonFencedKeyTTL, ReasonTooManyFences, ReasonCursorExpired,
			ReasonEpochMismatch, ReasonMoveRunning},
		ErrTooLarge: {ReasonKeyTooLong, ReasonPrefixTooLong, ReasonAfterTooLong, ReasonNameTooLong,
			ReasonOwnerTooLong, ReasonFenceLockTooLong, ReasonValueTooLarge, ReasonWatchPrefixLarge,
			ReasonReplyTooLarge, ReasonTooLarge},
		ErrUnavailable: {ReasonNoResponders, ReasonTimeout, ReasonDeadlinePassed, ReasonNATS, ReasonContention, ReasonOverloaded,
			ReasonViewStale, ReasonViewBehind, ReasonNoQuorum, ReasonExpiryPending, ReasonShuttingDown,
			ReasonJetStream, ReasonJetStreamBusy, ReasonJetStreamRead, ReasonJetStreamWrite,
			ReasonShardUnavailable, ReasonShardTimeout, ReasonMoved, ReasonHandover},
		ErrInternal: {ReasonInternal, ReasonMalformedReply, ReasonBadFences, ReasonBadShardPage,
			ReasonCorruptLock, ReasonUnknownRequest, ReasonEmptyPage},
	} {
		for _, r := range rs {
			if reasonKinds[r] != nil {
				panic("apierr: reason " + string(r) + " has two kinds")
			}
			reasonKinds[r] = kind
		}
	}
}

// Reasons returns every reason defined here: those of error replies, the
// watch end reasons and the move reason (docs/API.md must list each; a test checks it).
func Reasons() []Reason {
	out := []Reason{ReasonUnspecified, ReasonSlowConsumer, ReasonKeepaliveTimeout, ReasonClientCancel, ReasonEventConnection,
		ReasonShardUnserved}
	for r := range reasonKinds {
		out = append(out, r)
	}
	return out
}

// Errorf builds the *Error of reason r; its kind (and code) is r's, so a
// call site names the reason only. A reason without a kind builds a 500.
func Errorf(r Reason, format string, args ...any) *Error {
	kind := r.Kind()
	if kind == nil {
		kind = ErrInternal
	}
	return New(kind, r, format, args...)
}
