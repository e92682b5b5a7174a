package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Priority is a job's class: high jobs run before normal ones, normal before low.
type Priority string

// The priority classes.
const (
	PriorityHigh   Priority = "high"
	PriorityNormal Priority = "normal"
	PriorityLow    Priority = "low"
)

// ErrBadPriority is a priority other than high, normal or low.
var ErrBadPriority = errors.New("invalid priority")

// ErrBadProgram is a program name outside 1–64 of [A-Za-z0-9._-].
var ErrBadProgram = errors.New("invalid program name")

// ParsePriority accepts exactly "high", "normal" and "low".
func ParsePriority(s string) (Priority, error) {
	switch p := Priority(s); p {
	case PriorityHigh, PriorityNormal, PriorityLow:
		return p, nil
	}
	return "", fmt.Errorf("%w: priority %q: must be high, normal or low", ErrBadPriority, s)
}

// ValidateProgram checks a program name: 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'.
func ValidateProgram(name string) error {
	if len(name) < 1 || len(name) > 64 {
		return fmt.Errorf("%w: program %q: must be 1 to 64 characters of A-Z a-z 0-9 . _ -", ErrBadProgram, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: program %q: must be 1 to 64 characters of A-Z a-z 0-9 . _ -", ErrBadProgram, name)
		}
	}
	return nil
}

// QueuedOfProgram counts the jobs of one program waiting in the queue (running and
// retrying ones included, as Depth counts them); "" counts the anonymous program's.
//
// This version reads the queue message by message (its Foreman-Program header, else the
// job's record); the queue layout with the program in the subject makes it one count.
func (s *Store) QueuedOfProgram(ctx context.Context, program string) (uint64, error) {
	var n uint64
	for seq := uint64(0); ; seq++ {
		m, err := s.queue.GetMsg(ctx, seq, jetstream.WithGetMsgSubject("foreman.queue.>"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("broker: count queued jobs of %q: %w", program, err)
		}
		seq = m.Sequence
		got, ok := "", false
		if m.Header != nil {
			if vs, has := m.Header["Foreman-Program"]; has && len(vs) > 0 {
				got, ok = vs[0], true
			}
		}
		if !ok {
			j, _, err := s.Get(ctx, m.Header.Get(HeaderJobID))
			if err != nil {
				continue // no record: the worker drops the message
			}
			got = j.Program
		}
		if got == program {
			n++
		}
	}
}
