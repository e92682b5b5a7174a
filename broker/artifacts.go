package broker

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"
)

// ResultArtifact is the artifact that holds a finished job's whole result, also when the
// record carries it inline (Job.Result) for being small.
const ResultArtifact = "result.json"

var artifactName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateArtifactName accepts short names of letters, digits, '.', '_' and '-' that do not
// start with a dot, so a name can never climb out of its job's folder.
func ValidateArtifactName(name string) error {
	if !artifactName.MatchString(name) {
		return fmt.Errorf("%w: %q", ErrBadArtifactName, name)
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
	// A put that meets a leader election is tried again (a repeat replaces the object):
	// the result of a job that ran must not be lost to it.
	err := retrying(ctx, 2*s.cfg.RetryWindow, artifactAttempt, func(ctx context.Context) error {
		_, err := s.artifacts.PutBytes(ctx, meta.Name, data)
		return err
	})
	if err != nil {
		return Artifact{}, fmt.Errorf("broker: put artifact %s: %w", meta.Name, storageErr(err))
	}
	return Artifact{Name: name, ContentType: contentType, Size: int64(len(data))}, nil
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

// GetArtifact returns an artifact's metadata (from the job record) and bytes.
func (s *Store) GetArtifact(ctx context.Context, id, name string) (Artifact, []byte, error) {
	if err := ValidateArtifactName(name); err != nil {
		return Artifact{}, nil, err
	}
	j, _, err := s.Get(ctx, id)
	if err != nil {
		return Artifact{}, nil, err
	}
	a, ok := j.Artifact(name)
	if !ok {
		return Artifact{}, nil, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
	}
	data, err := s.artifacts.GetBytes(ctx, artifactObject(id, name))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return Artifact{}, nil, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
	}
	if err != nil {
		return Artifact{}, nil, fmt.Errorf("broker: get artifact: %w", err)
	}
	return a, data, nil
}
