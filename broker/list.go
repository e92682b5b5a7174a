package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// ListOptions filters and pages List.
type ListOptions struct {
	State State
	// Model matches the normalized model name.
	Model string
	// Limit caps the page; default 50, at most 1000.
	Limit int
	// Cursor is the last id of the previous page; the next page starts after it.
	Cursor string
}

// List returns jobs newest first (ULIDs sort by creation time) and the cursor of the next
// page, empty when there is none.
func (s *Store) List(ctx context.Context, opt ListOptions) ([]*Job, string, error) {
	if opt.Limit <= 0 {
		opt.Limit = 50
	}
	opt.Limit = min(opt.Limit, 1000)
	if opt.Cursor != "" {
		if err := ValidateID(opt.Cursor); err != nil {
			return nil, "", fmt.Errorf("bad cursor: %w", err)
		}
	}
	model := ""
	if opt.Model != "" {
		model = NormalizeModel(opt.Model)
	}
	lister, err := s.kv.ListKeysFiltered(ctx, "job.*")
	if err != nil {
		return nil, "", fmt.Errorf("broker: list: %w", err)
	}
	var ids []string
	for k := range lister.Keys() {
		ids = append(ids, strings.TrimPrefix(k, "job."))
	}
	slices.Sort(ids)
	slices.Reverse(ids)

	var out []*Job
	for _, id := range ids {
		if opt.Cursor != "" && id >= opt.Cursor {
			continue
		}
		j, _, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // expired or deleted since listed
		}
		if err != nil {
			return nil, "", err
		}
		if opt.State != "" && j.State != opt.State {
			continue
		}
		if model != "" && NormalizeModel(j.Model) != model {
			continue
		}
		if len(out) == opt.Limit {
			return out, out[len(out)-1].ID, nil
		}
		out = append(out, j)
	}
	return out, "", nil
}
