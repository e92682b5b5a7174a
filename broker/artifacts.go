package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"
)

// ResultArtifact is the artifact that holds a finished job's whole result, also when the
// record carries it inline (Job.Result) for being small: then the artifact is the record's
// copy (Artifact.Inline) and has no object of its own (ADR-0033).
const ResultArtifact = "result.json"

// HoldResult returns the metadata of a ResultArtifact held in the record, and whether res
// can be held there: it must be JSON that the record keeps byte for byte, i.e. already in
// the form json.Marshal gives a json.RawMessage (compact, HTML-escaped), so that
// GetArtifact serves the same bytes an object would. The caller sets Job.Result = res and
// records the artifact in the same write; a result that cannot be held is stored with
// StoreArtifact.
func HoldResult(res []byte) (Artifact, bool) {
	if len(res) == 0 || !json.Valid(res) {
		return Artifact{}, false
	}
	kept, err := json.Marshal(json.RawMessage(res))
	if err != nil || !bytes.Equal(kept, res) {
		return Artifact{}, false
	}
	return Artifact{Name: ResultArtifact, ContentType: "application/json", Size: int64(len(res)), Inline: true}, true
}

var artifactName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateArtifactName accepts short names of letters, digits, '.', '_' and '-' that do not
// start with a dot, so a name can never climb out of its job's folder.
func ValidateArtifactName(name string) error {
	if !artifactName.MatchString(name) {
		return fmt.Errorf("%w: %s", ErrBadArtifactName, quoteClipped(name))
	}
	return nil
}

func artifactObject(id, name string) string { return id + "/" + name }

// PutArtifact stores data as artifact name of job id and records its metadata on the job.
// Writing the same name again replaces it.
func (s *Store) PutArtifact(ctx context.Context, id, name, contentType string, data []byte) (Artifact, error) {
	a, err := s.StoreArtifact(ctx, id, name, contentType, data)
	if err != nil {
		return Artifact{}, err
	}
	_, _, err = s.Modify(ctx, id, func(j *Job) error {
		j.SetArtifact(a)
		return nil
	})
	return a, err
}

// StoreArtifact stores the bytes of an artifact without touching the job record; callers
// that finish a job put the returned metadata in the same write as the final state.
//
// It obeys the fault rules of the record and queue writes (retryWrite, ADR-0041), as a
// large submit's body put does: while a fault stands it fails at once with
// ErrStoreFailed, and a put that went unanswered is that fault when Config.WriteFault
// reports one. Else each try of the worker's held result (ADR-0058) would wait out its
// puts, 10 s each, and end ErrUnavailable rather than say the store cannot write.
func (s *Store) StoreArtifact(ctx context.Context, id, name, contentType string, data []byte) (Artifact, error) {
	if err := ValidateID(id); err != nil {
		return Artifact{}, err
	}
	if err := ValidateArtifactName(name); err != nil {
		return Artifact{}, err
	}
	meta := jetstream.ObjectMeta{
		Name:    artifactObject(id, name),
		Headers: map[string][]string{"Content-Type": {contentType}},
	}
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		return Artifact{}, fmt.Errorf("broker: put artifact %s: %w", meta.Name, err)
	}
	// A put that meets a leader election is tried again (a repeat replaces the object):
	// the result of a job that ran must not be lost to it.
	err := retrying(ctx, 2*s.cfg.RetryWindow, artifactAttempt, func(ctx context.Context) error {
		err := s.putObject(ctx, meta.Name, data)
		if Transient(err) || errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
			if ferr := s.fault.check(s.cfg.WriteFault, s.clock()); ferr != nil {
				return ferr
			}
		}
		return err
	})
	if err != nil {
		return Artifact{}, fmt.Errorf("broker: put artifact %s: %w", meta.Name, storageErr(err))
	}
	return Artifact{Name: name, ContentType: contentType, Size: int64(len(data))}, nil
}

// DropStrayResult deletes the result object an earlier attempt of ended job j stored and
// j's record does not point to. A large result is put in the object store before the
// terminal write that names it (StoreArtifact): an attempt cut off between the two (a
// crash, a terminal write the store refused, the job handed back) leaves the object, and
// a rerun whose result the record holds (ADR-0033), or that failed or was canceled,
// names none. Left, it held its bytes of the object store's room until its TTL. j is the
// record as its terminal write stored it: one that names an object ResultArtifact keeps
// it, and no later write changes an ended record. Such an object needs an attempt cut
// off after its target answered: a job done on its first attempt (an attempt refunded
// never reached the target) or never run has none and costs nothing. One done on a
// later attempt, or failed or canceled after one ran (a sync job of a foreman killed
// after its answer ends canceled, caller gone, without running again), costs a look. A
// failure only leaves the object to its TTL.
func (s *Store) DropStrayResult(ctx context.Context, j *Job) {
	if !j.State.Terminal() || j.Attempt < 1 || j.State == StateDone && j.Attempt < 2 {
		return
	}
	if a, ok := j.Artifact(ResultArtifact); ok && !a.Inline {
		return
	}
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bodyDeleteWait)
	defer cancel()
	err := s.artifacts.Delete(ctx, artifactObject(j.ID, ResultArtifact))
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
	case err != nil:
		s.log.Warn("delete an earlier attempt's result object; it is left for the object store's TTL", "job_id", j.ID, "model", j.Model, "err", err)
	default:
		s.log.Info("an earlier attempt's result object, which the job's record does not name, deleted", "job_id", j.ID, "model", j.Model)
	}
}

// SetArtifact adds or replaces artifact metadata on the record.
func (j *Job) SetArtifact(a Artifact) {
	for i := range j.Artifacts {
		if j.Artifacts[i].Name == a.Name {
			j.Artifacts[i] = a
			return
		}
	}
	j.Artifacts = append(j.Artifacts, a)
}

// HeldArtifact returns the bytes of artifact a when the record itself holds them
// (Artifact.Inline); ok is false for an artifact kept as an object.
func (j *Job) HeldArtifact(a Artifact) (data []byte, ok bool) {
	if !a.Inline || a.Name != ResultArtifact || len(j.Result) == 0 {
		return nil, false
	}
	return j.Result, true
}

// GetArtifact returns an artifact's metadata (from the job record) and bytes: from the
// record for one it holds, else from the object store. It reads the artifact whole, into
// memory: OpenArtifact serves one in parts, as it is read.
func (s *Store) GetArtifact(ctx context.Context, id, name string) (Artifact, []byte, error) {
	j, a, err := s.artifactOf(ctx, id, name)
	if err != nil {
		return Artifact{}, nil, err
	}
	if a.Inline {
		data, held := j.HeldArtifact(a)
		if !held {
			return Artifact{}, nil, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
		}
		return a, data, nil
	}
	data, err := s.getObject(ctx, artifactObject(id, name))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return Artifact{}, nil, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
	}
	if err != nil {
		return Artifact{}, nil, fmt.Errorf("broker: get artifact: %w", err)
	}
	return a, data, nil
}

// artifactOf returns job id's record and its metadata of artifact name.
func (s *Store) artifactOf(ctx context.Context, id, name string) (*Job, Artifact, error) {
	if err := ValidateArtifactName(name); err != nil {
		return nil, Artifact{}, err
	}
	j, _, err := s.Get(ctx, id)
	if err != nil {
		return nil, Artifact{}, err
	}
	a, ok := j.Artifact(name)
	if !ok && s.mayBeReplicated() {
		// The record may be a replica's that has not got the write listing the artifact
		// yet (the one that ended the job, for its result): the leader's has it.
		if j, err = s.leaderRecord(ctx, id); err != nil {
			return nil, Artifact{}, err
		}
		a, ok = j.Artifact(name)
	}
	if !ok {
		return nil, Artifact{}, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
	}
	return j, a, nil
}

// leaderRecord is job id's record as the jobs bucket's leader has it.
func (s *Store) leaderRecord(ctx context.Context, id string) (*Job, error) {
	var e jetstream.KeyValueEntry
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		e, err = s.leaderGet(ctx, JobsBucket, jobKey(id))
		return err
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("broker: get %s: %w", id, err)
	}
	return DecodeJob(e.Value())
}

// getObject reads object name whole, into a buffer of the size its info gives.
// jetstream's GetBytes grows one from nothing instead: for a body of 30 MB that is 64 MB
// of buffers made (the last one half empty), on the worker's way to each large job. The
// read goes on to the object's end, where its digest is checked.
//
// The object's info is a direct get, which a replica behind the one that stored the
// object may answer "not found" (leaderget.go), and its chunks come from a consumer on a
// replica that may not have the last of them yet: the read ends short, and its digest
// does not match. On a store that may be replicated either is the stream's leader's to
// settle before the object counts as gone (a job's request body, which fails the job) or
// corrupt (which costs the job an attempt).
func (s *Store) getObject(ctx context.Context, name string) ([]byte, error) {
	data, err := s.readObject(ctx, name)
	if s.mayBeReplicated() && (errors.Is(err, jetstream.ErrObjectNotFound) || errors.Is(err, jetstream.ErrDigestMismatch)) {
		return s.leaderObject(ctx, name)
	}
	return data, err
}

// readObject reads object name whole through the object store, any replica answering.
func (s *Store) readObject(ctx context.Context, name string) ([]byte, error) {
	res, err := s.artifacts.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return nil, err
	}
	return readSized(res, info.Size)
}

// readSized reads r to its end into a buffer made for size bytes.
func readSized(r io.Reader, size uint64) ([]byte, error) {
	// MinRead more: bytes.Buffer grows its buffer (doubling it) when less than that is
	// free before a read, the last one (which finds the end) included. The size only
	// sizes the buffer, which grows past it if the object is larger.
	buf := bytes.NewBuffer(make([]byte, 0, min(size, maxObjectPrealloc)+bytes.MinRead))
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// maxObjectPrealloc bounds the buffer getObject makes from an object's info alone.
const maxObjectPrealloc = 1 << 30
