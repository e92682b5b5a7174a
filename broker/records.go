package broker

import (
	"context"

	"github.com/nats-io/nats.go"
)

// A page of GET /jobs with a filter reads the record of every job it meets until the page
// is full: behind a deep queue of waiting jobs, the status page's finished ones
// (state=done,failed,canceled) read every waiting job's record, one request each (2.5 s
// for 50k). readRecords reads them in batches instead: one direct get of the last
// revision of up to recordsBatch keys (multi_last, nats-server 2.11 and later). A key the
// answer lacks (not found, or a server that does not know the request) is read alone
// (Get), which keeps Get's answer for it: a replica behind its leader, a record gone.
const recordsBatch = 256

// recordsAlone is the most records read one by one rather than in a batch: a batch's
// subscription costs about what a few reads do.
const recordsAlone = 8

// record is a job record read by readRecords, or the error reading it.
type record struct {
	job *Job
	err error
}

// multiLast is a stream's direct-get request for the last message of each subject.
type multiLast struct {
	MultiLastFor []string `json:"multi_last"`
	Batch        int      `json:"batch"`
	MaxBytes     int      `json:"max_bytes"`
}

// readRecords reads the records of ids, as Get does each; the i-th answer is ids[i]'s.
func (s *Store) readRecords(ctx context.Context, ids []string) []record {
	if s.recordsRead != nil {
		s.recordsRead(len(ids))
	}
	out := make([]record, len(ids))
	done := make([]bool, len(ids))
	for lo := 0; lo < len(ids) && len(ids) > recordsAlone; lo += recordsBatch {
		hi := min(lo+recordsBatch, len(ids))
		s.lastRecords(ctx, ids[lo:hi], out[lo:hi], done[lo:hi])
	}
	for i, id := range ids {
		if !done[i] {
			out[i].job, _, out[i].err = s.Get(ctx, id)
		}
	}
	return out
}

// lastRecords asks for the last revision of the records of ids in one batched direct get,
// and fills in out (and done) for those the answer holds. Any failure leaves the rest to
// Get.
func (s *Store) lastRecords(ctx context.Context, ids []string, out []record, done []bool) {
	prefix := "$KV." + JobsBucket + "."
	at := make(map[string]int, len(ids))
	subjects := make([]string, 0, len(ids))
	for i, id := range ids {
		if ValidateID(id) != nil {
			continue // Get says why
		}
		at[prefix+jobKey(id)] = i
		subjects = append(subjects, prefix+jobKey(id))
	}
	if len(subjects) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	req := multiLast{MultiLastFor: subjects, Batch: len(subjects), MaxBytes: queueBatchBytes}
	// Any failure ends the answer: what it did not hold is read by Get.
	_ = s.askDirect(ctx, "KV_"+JobsBucket, req, func(m *nats.Msg) bool {
		if m.Header.Get("Status") != "" {
			return false // the end of the answer (204), none found (404), or no batch at all
		}
		i, ok := at[m.Header.Get(directSubject)]
		if !ok || done[i] || m.Header.Get("KV-Operation") != "" {
			// Not asked for, or deleted or purged: Get says it as it does (from the
			// leader too).
			return true
		}
		out[i].job, out[i].err = DecodeJob(m.Data)
		done[i] = true
		return true
	})
}
