package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// ListOptions filters and pages List.
type ListOptions struct {
	// States matches a job in any of them; none does not filter.
	States []State
	// Model matches the normalized model name.
	Model string
	// Program matches the job's program exactly; empty does not filter.
	Program string
	// Limit caps the page; default 50, at most 1000.
	Limit int
	// Cursor is the last id of the previous page; the next page starts after it.
	Cursor string
	// MaxResultBytes, when > 0, ends a page before the job whose result (Job.Result, up
	// to 64 KiB each) would take its jobs' results past it; a page always holds one job.
	// The page's cursor goes on from there.
	MaxResultBytes int
}

// Paging newest first without reading every record (ADR-0025). Job ids are ULIDs, made
// just before the record's first write, so a job's every revision sits in the bucket's
// stream at or after the time its id names. Reading the stream backwards from its end
// down to a message stored at time t has therefore met (a revision of) every job whose id
// is later than t: those ids are final, in id order, and the page is read from them. A
// page costs the stream's messages since its oldest job was created, not the whole bucket.
const (
	// listFirstWindow is the first stretch of the stream read back from its end; each
	// further one doubles, up to listMaxWindow.
	listFirstWindow = 256
	listMaxWindow   = 16384
	// idClockSlack covers a clock that made ids ahead of the NATS server's clock (an
	// external server on another host). Generous: a clock ahead by more than this can have
	// a job skipped by every page, while the slack costs only the writes of that many
	// more seconds read back.
	idClockSlack = 30 * time.Second
)

// List returns jobs newest first (ULIDs sort by creation time) and the cursor of the next
// page, empty when there is none. A store that does not answer fails it with
// ErrUnavailable, as it does every other read.
func (s *Store) List(ctx context.Context, opt ListOptions) ([]*Job, string, error) {
	jobs, next, err := s.list(ctx, opt)
	// A page is many reads, of which the single requests are retried; a stream read (a
	// consumer's fetch) that met no answer is that too.
	return jobs, next, unavailable(err)
}

func (s *Store) list(ctx context.Context, opt ListOptions) ([]*Job, string, error) {
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
		model = ollama.NormalizeModel(opt.Model)
	}
	info, err := s.kvStream(ctx)
	if err != nil {
		return nil, "", err
	}
	p := &pager{opt: opt, model: model, seen: map[string]bool{}}
	// Reading the stream back costs its messages, reading every key costs the keys (a
	// message read back costs about 1.5 keys read); the stream holds a few revisions per
	// key. Past a budget of half the keys' number (deep pages, rare filter matches)
	// reading every key is the cheaper way.
	budget := max(info.State.NumSubjects/2, listFirstWindow)
	switch s.listMode {
	case listByScan:
		budget = math.MaxUint64
	case listByKeys:
		return s.listByKeys(ctx, p)
	}
	if opt.Cursor != "" {
		after, err := s.messagesSince(ctx, opt.Cursor, info)
		if err != nil {
			return nil, "", err
		}
		if after > budget {
			return s.listByKeys(ctx, p)
		}
	}
	hi, window, read := info.State.LastSeq, uint64(listFirstWindow), uint64(0)
	for hi >= info.State.FirstSeq && hi > 0 {
		// A job skipped by the state its latest revision says (its one message, mostly: a
		// waiting job's create) is not counted: reading every key instead would read its
		// record.
		if read-min(read, p.hinted) > budget {
			return s.listByKeys(ctx, &pager{opt: opt, model: model, seen: map[string]bool{}})
		}
		lo := info.State.FirstSeq
		if hi-lo+1 > window {
			lo = hi - window + 1
		}
		oldest, err := s.scanKeys(ctx, lo, hi, p.meet)
		if err != nil {
			return nil, "", err
		}
		if !oldest.IsZero() {
			// Every job not met yet was created at or before oldest.
			bound := ulid.ULID{}
			if err := bound.SetTime(ulid.Timestamp(oldest.Add(idClockSlack)) + 1); err == nil {
				if done, err := p.take(ctx, s, bound.String()); err != nil || done {
					return p.result(err)
				}
			}
		}
		read += hi - lo + 1
		hi, window = lo-1, min(2*window, listMaxWindow)
	}
	_, err = p.take(ctx, s, "") // the whole stream was read: every job is final
	return p.result(err)
}

// listByKeys reads every job key of the bucket and pages through them.
func (s *Store) listByKeys(ctx context.Context, p *pager) ([]*Job, string, error) {
	keys, err := s.bucketKeys(ctx, JobsBucket, "job.*")
	if err != nil {
		return nil, "", fmt.Errorf("broker: list: %w", err)
	}
	for _, k := range keys {
		p.meet(strings.TrimPrefix(k, "job."), true, "")
	}
	_, err = p.take(ctx, s, "")
	return p.result(err)
}

// messagesSince estimates the bucket writes stored since the time job id names: a binary
// search of the stream by message time, a few direct gets whatever its size.
func (s *Store) messagesSince(ctx context.Context, id string, info *jetstream.StreamInfo) (uint64, error) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return 0, fmt.Errorf("bad cursor: %w", err)
	}
	t := ulid.Time(u.Time())
	var stream jetstream.Stream
	err = s.retry(ctx, func(ctx context.Context) error {
		var err error
		stream, err = s.js.Stream(ctx, "KV_"+JobsBucket)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("broker: list: %w", err)
	}
	lo, hi := info.State.FirstSeq, info.State.LastSeq+1 // the first message at or after t is in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo)/2
		var m *jetstream.RawStreamMsg
		err := s.retry(ctx, func(ctx context.Context) error {
			var err error
			m, err = stream.GetMsg(ctx, mid, jetstream.WithGetMsgSubject("$KV."+JobsBucket+".>"))
			return err
		})
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			hi = mid // nothing from mid on
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("broker: list: %w", err)
		}
		if m.Time.Before(t) {
			lo = m.Sequence + 1
		} else {
			hi = mid
		}
	}
	return info.State.LastSeq + 1 - lo, nil
}

// listMode forces one way of listing (tests): 0 picks by cost.
type listMode int

const (
	listByCost listMode = iota
	listByScan
	listByKeys
)

// pager gathers one List page.
type pager struct {
	opt     ListOptions
	model   string
	seen    map[string]bool // job ids met in the stream
	pending []string        // live ids met, not yet final
	out     []*Job
	results int  // the bytes of the results of out
	more    bool // a match beyond the page exists
	// hinted counts the jobs met that the state their latest revision says
	// (HeaderRecordState) left off the page unread.
	hinted uint64
}

// meet notes a job key met reading the stream backwards: the first time is its latest
// revision, which tells whether the job still exists and, when its writer said it
// (state, else ""), the job's state.
func (p *pager) meet(id string, live bool, state State) {
	if p.seen[id] || len(id) != ulid.EncodedSize {
		return
	}
	p.seen[id] = true
	if !live || (p.opt.Cursor != "" && id >= p.opt.Cursor) {
		return
	}
	if state != "" && len(p.opt.States) > 0 {
		if !slices.Contains(p.opt.States, state) {
			// Not listed, by the state its latest revision was written with: no read. (A
			// job that changes after this is listed as it was then, as if met unread.)
			p.hinted++
			return
		}
	}
	p.pending = append(p.pending, id)
}

// take reads, newest first, the pending jobs whose ids are at or after bound (all of
// them when bound is empty) and keeps the matches; it reports whether the page is full.
// Ids met later are all older than bound, so nothing can come before those taken.
//
// The records are read ahead in batches (readRecords): the first is the page and one
// more, what an unfiltered page reads; each next one doubles, up to recordsBatch, so a
// page reads at most a batch more than it needs.
func (p *pager) take(ctx context.Context, s *Store, bound string) (bool, error) {
	slices.Sort(p.pending)
	cut := 0
	if bound != "" {
		cut, _ = slices.BinarySearch(p.pending, bound)
	}
	final := p.pending[cut:]
	p.pending = p.pending[:cut:cut]
	chunk := p.opt.Limit + 1
	for hi := len(final); hi > 0; {
		lo := max(hi-chunk, 0)
		recs := s.readRecords(ctx, final[lo:hi])
		for i := len(recs) - 1; i >= 0; i-- {
			j, err := recs[i].job, recs[i].err
			if errors.Is(err, ErrNotFound) {
				continue // expired or deleted since it was met
			}
			if err != nil {
				return false, err
			}
			if len(p.opt.States) > 0 && !slices.Contains(p.opt.States, j.State) {
				continue
			}
			if p.model != "" && ollama.NormalizeModel(j.Model) != p.model {
				continue
			}
			if p.opt.Program != "" && j.Program != p.opt.Program {
				continue
			}
			if len(p.out) == p.opt.Limit || (p.opt.MaxResultBytes > 0 && len(p.out) > 0 && p.results+len(j.Result) > p.opt.MaxResultBytes) {
				p.more = true
				return true, nil
			}
			p.out = append(p.out, j)
			p.results += len(j.Result)
		}
		hi, chunk = lo, min(2*chunk, recordsBatch)
	}
	return false, nil
}

func (p *pager) result(err error) ([]*Job, string, error) {
	if err != nil {
		return nil, "", err
	}
	if p.more {
		return p.out, p.out[len(p.out)-1].ID, nil
	}
	return p.out, "", nil
}

// kvStream is the state of the job bucket's stream.
func (s *Store) kvStream(ctx context.Context) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	err := s.retry(ctx, func(ctx context.Context) error {
		st, err := s.js.Stream(ctx, "KV_"+JobsBucket)
		if err != nil {
			return err
		}
		info, err = st.Info(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("broker: list: %w", err)
	}
	return info, nil
}

// noResponderPause is how long a listing waits before it asks again a consumer whose
// pull reached no one.
const noResponderPause = 20 * time.Millisecond

// scanKeys reads the job keys stored in the bucket's stream between sequences lo and hi
// (headers only) and hands them to meet newest first, with whether that revision is a
// value (not a delete or purge marker) and the state its writer said it has
// (HeaderRecordState), if any. It returns when the oldest of them was stored.
func (s *Store) scanKeys(ctx context.Context, lo, hi uint64, meet func(id string, live bool, state State)) (time.Time, error) {
	prefix := "$KV." + JobsBucket + ".job."
	var c jetstream.Consumer
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		c, err = s.js.CreateConsumer(ctx, "KV_"+JobsBucket, jetstream.ConsumerConfig{
			FilterSubject:     prefix + "*",
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       lo,
			AckPolicy:         jetstream.AckNonePolicy,
			HeadersOnly:       true,
			MemoryStorage:     true,
			InactiveThreshold: time.Minute, // should the delete below fail, or a try land unseen
		})
		return err
	})
	if errors.Is(err, jetstream.ErrMaximumConsumersLimit) {
		// As many listings at once as the server lets the stream have consumers (1,000
		// by default): the store is busy, and the listing may be asked again shortly.
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("broker: list: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.js.DeleteConsumer(dctx, "KV_"+JobsBucket, c.CachedInfo().Name)
	}()
	type rev struct {
		id    string
		live  bool
		state State
	}
	var (
		revs   []rev
		oldest time.Time
		// A pull that reached no one is asked again until then: on a cluster the consumer
		// just made lives on one node, and the interest in its pulls reaches the node this
		// connection is on a moment later ("no responders": nothing was delivered).
		asking = time.Now().Add(s.cfg.RetryWindow)
		// idle is when pulls began to bring nothing while messages were pending: a server
		// slow to deliver (busy, its disk slow) is waited for up to the retry window.
		idle time.Time
	)
	for done, wait := false, false; !done; {
		var (
			batch jetstream.MessageBatch
			err   error
		)
		if s.listFetch != nil {
			s.listFetch(c.CachedInfo().Name)
		}
		if wait {
			batch, err = c.Fetch(int(min(hi-lo+1, 4096)), jetstream.FetchMaxWait(time.Second))
		} else {
			batch, err = c.FetchNoWait(int(min(hi-lo+1, 4096)))
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("broker: list: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return time.Time{}, fmt.Errorf("broker: list: %w", err)
			}
			if md.Sequence.Stream > hi {
				done = true
				continue
			}
			if oldest.IsZero() {
				oldest = md.Timestamp
			}
			op := m.Headers().Get("KV-Operation")
			revs = append(revs, rev{strings.TrimPrefix(m.Subject(), prefix), op != "DEL" && op != "PURGE", State(m.Headers().Get(HeaderRecordState))})
			if md.Sequence.Stream == hi || md.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			if n == 0 && errors.Is(err, nats.ErrNoResponders) && time.Now().Before(asking) {
				t := time.NewTimer(noResponderPause)
				select {
				case <-ctx.Done():
					t.Stop()
					return time.Time{}, fmt.Errorf("broker: list: %w", context.Cause(ctx))
				case <-t.C:
				}
				continue
			}
			return time.Time{}, fmt.Errorf("broker: list: %w", err)
		}
		if n == 0 {
			// Nothing came: the window's end is gone (expired, purged), or, on a busy
			// server, the messages were not ready yet; the consumer knows which. Ending
			// the window while messages are pending would leave the jobs only they name
			// off the page, with nothing to say so.
			info, err := c.Info(ctx)
			if err != nil {
				return time.Time{}, fmt.Errorf("broker: list: %w", err)
			}
			switch {
			case info.NumPending == 0:
				done = true
			case idle.IsZero():
				idle = time.Now()
			case time.Since(idle) >= s.cfg.RetryWindow:
				return time.Time{}, fmt.Errorf("broker: list: %w: the server delivered none of the %d messages pending for %v",
					ErrUnavailable, info.NumPending, s.cfg.RetryWindow)
			}
		} else {
			idle = time.Time{}
		}
		wait = n == 0
	}
	for i := len(revs) - 1; i >= 0; i-- {
		meet(revs[i].id, revs[i].live, revs[i].state)
	}
	return oldest, nil
}
