// Package apierr is latchkey's one error vocabulary. Every failure a service
// can answer with is an *Error whose Kind is one of the sentinels below; the
// sentinels map once, here, to the HTTP-like codes of docs/API.md, and back
// again on the client side, so errors.Is works across the wire.
package apierr

import (
	"errors"
	"fmt"
	"strconv"
)

// The kinds of failure. Compare with errors.Is.
var (
	// ErrInvalid: the request is malformed or breaks a rule (400).
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: the named thing does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: a precondition failed: revision mismatch, lock held,
	// stale fence, token no longer holds (409).
	ErrConflict = errors.New("conflict")
	// ErrTooLarge: a size limit was exceeded (413).
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: a dependency is down or overloaded; retry (503).
	ErrUnavailable = errors.New("unavailable")
	// ErrInternal: a bug or an unexpected failure (500).
	ErrInternal = errors.New("internal error")
)

var codes = []struct {
	kind error
	code int
}{
	{ErrInvalid, 400},
	{ErrNotFound, 404},
	{ErrConflict, 409},
	{ErrTooLarge, 413},
	{ErrUnavailable, 503},
	{ErrInternal, 500},
}

// Error is a failure with a kind, a stable machine-readable reason and a
// sentence for humans.
type Error struct {
	Kind    error  // one of the sentinels above
	Reason  string // e.g. "revision_mismatch"; stable, snake_case
	Message string // a sentence that says what went wrong and which limit
}

func (e *Error) Error() string { return e.Message }

// Unwrap makes errors.Is(err, ErrConflict) and friends work.
func (e *Error) Unwrap() error { return e.Kind }

// Code is the API status code of the error.
func (e *Error) Code() int { return CodeOf(e.Kind) }

// New builds an *Error of the given kind.
func New(kind error, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Invalid, Conflict, TooLarge and Unavailable are shorthands for New.
func Invalid(reason, format string, args ...any) *Error {
	return New(ErrInvalid, reason, format, args...)
}

// Conflict builds a 409.
func Conflict(reason, format string, args ...any) *Error {
	return New(ErrConflict, reason, format, args...)
}

// TooLarge builds a 413.
func TooLarge(reason, format string, args ...any) *Error {
	return New(ErrTooLarge, reason, format, args...)
}

// Unavailable builds a 503.
func Unavailable(reason, format string, args ...any) *Error {
	return New(ErrUnavailable, reason, format, args...)
}

// CodeOf returns the API code for a sentinel kind (500 for anything else).
func CodeOf(kind error) int {
	for _, c := range codes {
		if kind == c.kind {
			return c.code
		}
	}
	return 500
}

// KindOf returns the sentinel for an API code (ErrInternal if unknown).
func KindOf(code int) error {
	for _, c := range codes {
		if code == c.code {
			return c.kind
		}
	}
	return ErrInternal
}

// From turns any error into an *Error. Errors that are not already *Error
// become internal errors; callers wrap dependency failures they understand
// (timeouts, no responders) before they get here.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	for _, c := range codes {
		if errors.Is(err, c.kind) {
			return &Error{Kind: c.kind, Reason: "error", Message: err.Error()}
		}
	}
	return &Error{Kind: ErrInternal, Reason: "internal", Message: err.Error()}
}

// Headers used by nats.go/micro for service errors.
const (
	HeaderCode    = "Nats-Service-Error-Code"
	HeaderMessage = "Nats-Service-Error"
)

// FromHeaders rebuilds the error carried by a reply's headers, or returns
// nil when the reply is not an error. reason may be empty when the body did
// not name one.
func FromHeaders(code, message, reason string) *Error {
	if code == "" {
		return nil
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		n = 500
	}
	if reason == "" {
		reason = "error"
	}
	return &Error{Kind: KindOf(n), Reason: reason, Message: message}
}
