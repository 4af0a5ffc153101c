# vouch's default policy: may this artifact, built from this commit, enter this environment?
#
# Answer: data.vouch.decision = {"allow": bool, "denials": set of strings}. Every missing or
# failed condition is its own denial, naming the environment, the step and what was expected.
# Rego v1 syntax throughout (`if`, `contains`, `in`): an interpreter reading v0 rules such as
# `deny[msg] { ... }` gives them another meaning.
#
# Input: rollout/policy/input.schema.json. Each attestation is its projection: step, the
# predicate fields below, subjects as "sha256:HEX", the commits it names, signers, source.
# Settings for the environment come from input.settings, merged over the environment's
# defaults below; an environment with no defaults of its own gets production's, the strictest.
#
# An attestation counts for a required step when
#   - one of its subjects is the artifact (same sha256 digest),
#   - it names the released commit (input.commit.sha) among its commits; a step about the
#     artifact alone (settings.artifact_only_steps) may name no commit. A fast-forward merge
#     releases the pull request's head itself, so the pull request's attestations name this
#     very commit; a non-fast-forward merge makes a new commit, whose attestations must be
#     made again,
#   - it is signed by a signer accepted for the step (settings.signers; any verified signer
#     when the step lists none),
#   - its predicate says the step passed (below).
#
# Predicate fields read (vouch's own: rollout/attestations/schemas/STEP.v1.json); the
# projection keeps exactly these (rollout/policy/projection.py):
#   tests (test-result v0.1)        result == "PASSED"; failedTests
#   vulnerability-scan (vulns v0.2) scanner.result[] {id, severity[] {score}}; a score is
#                                   a level ("CRITICAL", "HIGH", ...) or a CVSS number
#   dco                             passed; commits[] {sha, signed_off, reason}
#   signed-commits                  passed; commits[] {sha, verified, reason}
#   coverage                        percent
#   secret-scan                     findings[] {rule, file} (a count is accepted too)
#   review-approval                 author; approvers[] {name, commit}
#   ephemeral-environment-health    healthy; checks[] {name, passed}
#   network-tests                   result == "PASSED"; failed_tests
#   deployed                        environment, service (and held, when given, is true)
#
# Written for the embedded engine (regopy), which spends microseconds on every expression,
# every function rule it tries and every literal it builds, once per decision: the rules
# that decide are few and flat, and the rules that explain a denial start with
# `count(failing) > 0`, so they cost nothing when all is well.
package vouch

# --------------------------------------------------------------------------- settings

staging_steps := [
	"build",
	"tests",
	"dco",
	"signed-commits",
	"vulnerability-scan",
	"secret-scan",
	"coverage",
	"review-approval",
	"ephemeral-environment-health",
	"network-tests",
]

# Each environment's defaults are written out whole, and only the environment's own are
# built: the engine builds a rule's value again for every decision that reads it.
environment_defaults := production_defaults if {
	environment == "production"
} else := staging_defaults if {
	environment == "staging"
} else := dev_defaults if {
	environment == "dev"
} else := production_defaults

dev_defaults := {
	"required": ["build", "tests"],
	"signers": {},
	"max_critical": 0,
	"max_high": 3,
	"min_coverage": 80,
	"previous_environment": "staging",
	"artifact_only_steps": ["vulnerability-scan", "artifact-signature", "deployed"],
}

staging_defaults := {
	"required": staging_steps,
	"signers": {},
	"max_critical": 0,
	"max_high": 3,
	"min_coverage": 80,
	"previous_environment": "staging",
	"artifact_only_steps": ["vulnerability-scan", "artifact-signature", "deployed"],
}

production_defaults := {
	"required": array.concat(staging_steps, ["deployed"]),
	"signers": {},
	"max_critical": 0,
	"max_high": 3,
	"min_coverage": 80,
	"previous_environment": "staging",
	"artifact_only_steps": ["vulnerability-scan", "artifact-signature", "deployed"],
}

environment := input.environment

settings := object.union(environment_defaults, object.get(input, "settings", {}))

required := {step | some step in settings.required}

artifact_only := {step | some step in settings.artifact_only_steps}

any_signer if count(settings.signers) == 0

sha := input.commit.sha

artifact := input.artifact.digest

# --------------------------------------------------------------------------- the decision

decision := {"allow": count(denials) == 0, "denials": denials}

denials := ((((missing | not_counting) | rejected) | commit_denials) | malformed) | unexplained

# An input this policy cannot read denies: without it every rule below would be undefined,
# and an empty set of denials would allow. A well-formed input skips building the five sets.
malformed := set() if {
	valid_environment
	valid_artifact
	valid_commit
	is_array(input.attestations)
	valid_required
} else := (
	(({no_environment | not valid_environment} | {no_artifact | not valid_artifact}) | {no_commit | not valid_commit})
	| {no_attestations | not is_array(input.attestations)}
) | {no_required | not valid_required}

valid_environment if {
	is_string(input.environment)
	input.environment != ""
}

valid_artifact if {
	is_string(input.artifact.digest)
	startswith(input.artifact.digest, "sha256:")
}

valid_commit if {
	is_string(input.commit.sha)
}

valid_required if {
	is_array(settings.required)
	every step in settings.required {
		is_string(step)
	}
}

no_environment := "policy input malformed: input.environment must be a non-empty string"

no_artifact := "policy input malformed: input.artifact.digest must be sha256:HEX"

no_commit := "policy input malformed: input.commit.sha must be the released commit"

no_attestations := "policy input malformed: input.attestations must be a list"

no_required := "policy input malformed: the environment's required steps must be a list of step names"

# The steps with an attestation that counts: the one rule that reads every attestation when
# everything passes.
passed := {a.step |
	some a in input.attestations
	artifact in a.subjects
	commit_named(a)
	signer_ok(a)
	step_passed(a.step, a.predicate)
}

failing := required - passed

missing := {msg |
	count(failing) > 0
	some step in failing
	not step in seen
	msg := sprintf("%s: step '%s' is missing: expected %s, for artifact %s at commit %s%s", [
		environment, step, expectation(step), artifact, sha, signer_clause(step),
	])
}

seen := {a.step | some a in input.attestations}

not_counting := {msg |
	count(failing) > 0
	some a in input.attestations
	a.step in failing
	some reason in why(a)
	msg := sprintf("%s: step '%s': attestation %s does not count: %s", [environment, a.step, a.source, reason])
}

rejected := {msg |
	count(failing) > 0
	some r in input.rejected
	msg := sprintf("%s: an attestation was rejected, so it counts for no step: %s (%s): %s", [
		environment, r.source, r.digest, r.reason,
	])
}

commit_denials := {msg |
	input.commit.merge == "fast-forward"
	is_string(input.commit.pr_head)
	input.commit.pr_head != sha
	msg := sprintf("%s: commit: the merge is reported as fast-forward, but the pull request head %s is not the released commit %s", [
		environment, input.commit.pr_head, sha,
	])
}

# A step that did not pass always says why; should no rule above explain it, this does,
# so that a failing step can never leave the denials empty.
unexplained := {msg |
	count(failing) > 0
	some step in failing
	not explained(step)
	msg := sprintf("%s: step '%s' did not pass, and this policy could not say why", [environment, step])
}

explained(step) if not step in seen

explained(step) if {
	some a in input.attestations
	a.step == step
	count(why(a)) > 0
}

why(a) := ((artifact_problems(a) | commit_problems(a)) | signer_problems(a)) | step_failures(a)

expectation(step) := text if {
	text := expectations[step]
} else := sprintf("a verified '%s' attestation that passed", [step])

expectations := {
	"build": "SLSA provenance of the build",
	"tests": "test results that PASSED",
	"dco": "a DCO check with every commit signed off",
	"signed-commits": "a check that every commit carries a verified signature",
	"vulnerability-scan": sprintf("a vulnerability scan with at most %d critical and %d high findings", [
		settings.max_critical, settings.max_high,
	]),
	"secret-scan": "a secret scan with no findings",
	"coverage": sprintf("a coverage report of at least %v%%", [settings.min_coverage]),
	"review-approval": "an approval by someone other than the author",
	"ephemeral-environment-health": "a healthy ephemeral environment",
	"network-tests": "network tests that PASSED",
	"deployed": sprintf("vouch's own attestation that it deployed this digest to %s and it held", [
		settings.previous_environment,
	]),
}

signer_clause(step) := sprintf(", signed by one of %v", [accepted_signers(step)]) if {
	count(accepted_signers(step)) > 0
} else := ""

# --------------------------------------------------------------------------- subject, commit, signer

commit_named(a) := true if {
	sha in a.commits
} else := true if {
	a.commits == []
	a.step in artifact_only
}

signer_ok(a) := true if {
	any_signer
} else := true if {
	signer_accepted(a)
}

accepted_signers(step) := object.get(settings.signers, step, [])

signer_accepted(a) if {
	count(accepted_signers(a.step)) == 0
}

signer_accepted(a) if {
	some wanted in accepted_signers(a.step)
	some signer in a.signers
	every field, value in wanted {
		object.get(signer, field, null) == value
	}
}

artifact_problems(a) := set() if {
	artifact in a.subjects
} else := {sprintf("its subjects %v do not include the artifact %s", [a.subjects, artifact])}

commit_problems(a) := set() if {
	commit_named(a)
} else := {msg} if {
	count(a.commits) == 0
	msg := sprintf("it names no commit; expected one made for commit %s", [sha])
} else := {msg} if {
	input.commit.merge == "non-fast-forward"
	input.commit.pr_head in a.commits
	msg := sprintf("it was made for the pull request head %s; a non-fast-forward merge made the new commit %s, whose attestations must be made again", [
		input.commit.pr_head, sha,
	])
} else := {msg} if {
	msg := sprintf("it was made for commit %v, not the released commit %s", [{c | some c in a.commits}, sha])
}

signer_problems(a) := set() if {
	signer_ok(a)
} else := {sprintf("signed by %v, none of the signers accepted for '%s' in %s: %v", [
	signer_names(a), a.step, environment, accepted_signers(a.step),
])}

signer_names(a) := [name |
	some s in a.signers
	name := signer_name(s)
]

signer_name(s) := sprintf("key %s", [s.keyid]) if {
	s.kind == "key"
} else := sprintf("%v (issuer %v)", [object.get(s, "identity", null), object.get(s, "issuer", null)])

# --------------------------------------------------------------------------- did the step pass

# step_passed(step, p): the step recorded with predicate p passed. One chain, the most
# frequent steps first: the engine tries every rule of a function, so a rule per step
# would cost each attestation a dozen tries. A step not judged here (build,
# artifact-signature, ...) passes on its subject, commit and signer alone.
step_passed(step, p) := true if {
	step == "tests"
	p.result == "PASSED"
} else := true if {
	not step in judged_steps
} else := true if {
	step == "network-tests"
	p.result == "PASSED"
} else := true if {
	step == "coverage"
	is_number(p.percent)
	p.percent >= settings.min_coverage
} else := true if {
	step == "dco"
	p.passed == true
	every c in object.get(p, "commits", []) {
		c.signed_off == true
	}
} else := true if {
	step == "signed-commits"
	p.passed == true
	every c in object.get(p, "commits", []) {
		c.verified == true
	}
} else := true if {
	step == "secret-scan"
	p.findings in [[], 0]
} else := true if {
	step == "review-approval"
	authors := author_names(p)
	some approver in object.get(p, "approvers", [])
	is_string(approver.name)
	not lower(approver.name) in authors
	object.get(approver, "commit", sha) == sha
} else := true if {
	step == "ephemeral-environment-health"
	p.healthy == true
} else := true if {
	step == "vulnerability-scan"
	vulnerabilities_within_limits(p)
} else := true if {
	step == "deployed"
	object.get(p, "environment", null) == settings.previous_environment
	object.get(p, "service", null) == input.service
	object.get(p, "held", true) == true
}

judged_steps := {
	"tests", "network-tests", "dco", "signed-commits", "coverage", "secret-scan",
	"review-approval", "ephemeral-environment-health", "deployed", "vulnerability-scan",
}

# step_failures(a): why the step recorded by `a` did not pass; empty when it passed.
#
# rego-cpp renders a string literal wrongly when it reaches sprintf through a local variable
# (`msg := "..."`, a function argument, an object.get default): its quotes end up inside the
# text and the answer is no longer JSON. Fixed texts are therefore rule-level constants or a
# function's own value, and missing fields are read through text_of().

step_failures(a) := set() if {
	step_passed(a.step, a.predicate)
} else := test_failures(a.predicate, object.get(a.predicate, "failedTests", [])) if {
	a.step == "tests"
} else := dco_failures(a.predicate) if {
	a.step == "dco"
} else := signature_failures(a.predicate) if {
	a.step == "signed-commits"
} else := vulnerability_failures(a.predicate) if {
	a.step == "vulnerability-scan"
} else := secret_failures(a.predicate) if {
	a.step == "secret-scan"
} else := coverage_failures(a.predicate) if {
	a.step == "coverage"
} else := approval_failures(a.predicate) if {
	a.step == "review-approval"
} else := health_failures(a.predicate) if {
	a.step == "ephemeral-environment-health"
} else := test_failures(a.predicate, object.get(a.predicate, "failed_tests", [])) if {
	a.step == "network-tests"
} else := deployed_failures(a.predicate) if {
	a.step == "deployed"
} else := set()

# obj[key] when it is a string, else "(not given)".
text_of(obj, key) := obj[key] if {
	is_string(obj[key])
} else := "(not given)"

dco_incomplete := "the DCO check did not pass"

signatures_incomplete := "the signed-commits check did not pass"

no_coverage := "the coverage report gives no percent"

no_scan_result := "the vulnerability scan has no scanner.result list"

test_failures(p, failed) := set() if {
	p.result == "PASSED"
} else := {sprintf("the tests' result is %v, expected PASSED (failed: %v)", [object.get(p, "result", null), failed])}

# A check that failed names its commits; one that says it failed without naming any still fails.
dco_failures(p) := failing_commits if {
	failing_commits := {msg |
		some c in object.get(p, "commits", [])
		object.get(c, "signed_off", false) != true
		msg := sprintf("commit %v is not signed off (DCO): %s", [object.get(c, "sha", null), text_of(c, "reason")])
	}
	count(failing_commits) > 0
} else := {dco_incomplete} if {
	not p.passed == true
} else := set()

signature_failures(p) := failing_commits if {
	failing_commits := {msg |
		some c in object.get(p, "commits", [])
		object.get(c, "verified", false) != true
		msg := sprintf("commit %v has no verified signature: %s", [object.get(c, "sha", null), text_of(c, "reason")])
	}
	count(failing_commits) > 0
} else := {signatures_incomplete} if {
	not p.passed == true
} else := set()

coverage_failures(p) := set() if {
	is_number(p.percent)
	p.percent >= settings.min_coverage
} else := {msg} if {
	is_number(p.percent)
	msg := sprintf("coverage is %v%%, below the minimum of %v%% for %s", [p.percent, settings.min_coverage, environment])
} else := {no_coverage}

secret_failures(p) := set() if {
	p.findings == []
} else := set() if {
	p.findings == 0
} else := {msg} if {
	is_array(p.findings)
	places := [place | some f in p.findings; place := sprintf("%s in %s", [text_of(f, "rule"), text_of(f, "file")])]
	msg := sprintf("the secret scan found %d secret(s): %v", [count(p.findings), places])
} else := {sprintf("the secret scan reports findings: %v", [object.get(p, "findings", null)])}

health_failures(p) := set() if {
	p.healthy == true
} else := {sprintf("the ephemeral environment was not healthy (failed checks: %v)", [
	[text_of(c, "name") | some c in object.get(p, "checks", []); object.get(c, "passed", false) != true],
])}

deployed_failures(p) := {msg |
	object.get(p, "environment", null) != settings.previous_environment
	msg := sprintf("it records a deployment to %v, expected %s", [object.get(p, "environment", null), settings.previous_environment])
} | {msg |
	object.get(p, "service", null) != input.service
	msg := sprintf("it records a deployment of service %v, expected %s", [object.get(p, "service", null), input.service])
} | {msg |
	object.get(p, "held", true) != true
	msg := sprintf("it records that the deployment to %v did not hold", [object.get(p, "environment", null)])
}

# --------------------------------------------------------------------------- approvals

author_names(p) := {lower(n) |
	some n in [object.get(p, "author", null), object.get(input.commit, "author", null)]
	is_string(n)
}

independent_approvers(p) := {name |
	some ap in object.get(p, "approvers", [])
	name := ap.name
	is_string(name)
	not lower(name) in author_names(p)
	object.get(ap, "commit", sha) == sha
}

approval_failures(p) := set() if {
	count(independent_approvers(p)) > 0
} else := {sprintf("no approval by someone other than the author %v for commit %s (approvers: %v)", [
	object.get(p, "author", null), sha, [object.get(ap, "name", null) | some ap in object.get(p, "approvers", [])],
])}

# --------------------------------------------------------------------------- vulnerabilities

vulnerability_failures(p) := {no_scan_result} if {
	not is_array(p.scanner.result)
} else := {msg |
	levels := [[text_of(f, "id"), severity(f)] | some f in p.scanner.result]
	some [level, limit] in [["critical", settings.max_critical], ["high", settings.max_high]]
	found := [id | some [id, l] in levels; l == level]
	count(found) > limit
	msg := sprintf("%d %s vulnerabilities, at most %d allowed in %s: %v", [count(found), level, limit, environment, found])
}

vulnerabilities_within_limits(p) if {
	is_array(p.scanner.result)
	levels := [severity(f) | some f in p.scanner.result]
	count([l | some l in levels; l == "critical"]) <= settings.max_critical
	count([l | some l in levels; l == "high"]) <= settings.max_high
}

# A finding's level: its worst severity, from a level name or a CVSS base score.
severity(f) := worst({score_level(s.score) | some s in object.get(f, "severity", [])})

worst(levels) := "critical" if {
	"critical" in levels
} else := "high" if {
	"high" in levels
} else := "other"

score_level(score) := name if {
	is_string(score)
	name := lower(score)
	name in {"critical", "high"}
} else := "other" if {
	is_string(score)
	lower(score) in {"medium", "moderate", "low", "negligible", "none", "unknown"}
} else := level if {
	level := cvss_level(cvss(score))
} else := "other"

cvss_level(n) := "critical" if {
	n >= 9
} else := "high" if {
	n >= 7
} else := "other"

cvss(score) := score if {
	is_number(score)
} else := to_number(score) if {
	is_string(score)
	regex.match(`^[0-9]+(\.[0-9]+)?$`, score)
}
