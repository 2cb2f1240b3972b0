from debatelab.debate import Reply, Survey, derive_seed, next_step, schedule, speaker, survey_count


def test_schedule_round_robin_from_first_speaker():
    steps = schedule(3, 2, first=1)
    replies = [s for s in steps if isinstance(s, Reply)]
    assert [r.agent for r in replies] == [1, 2, 0, 1, 2, 0]
    assert [r.iteration for r in replies] == list(range(1, 7))


def test_surveys_before_debate_and_after_each_cycle():
    steps = schedule(3, 2, first=0)
    surveys = [s for s in steps if isinstance(s, Survey)]
    assert [s.iteration for s in surveys] == [0, 3, 6]
    assert all(s.agents == (0, 1, 2) for s in surveys)
    assert sum(len(s.agents) for s in surveys) == survey_count(3, 2) == 9
    # a survey comes right after the reply that closes its cycle
    assert steps.index(Survey(3, (0, 1, 2))) == steps.index(Reply(3, speaker(3, 0, 3))) + 1


def test_next_step_resumes_partial_survey_and_replies():
    steps = schedule(2, 1, first=0)
    assert next_step(steps, [], []) == Survey(0, (0, 1))
    assert next_step(steps, [], [(0, 0)]) == Survey(0, (1,))
    assert next_step(steps, [], [(0, 0), (0, 1)]) == Reply(1, 0)
    assert next_step(steps, [1, 2], [(0, 0), (0, 1)]) == Survey(2, (0, 1))
    assert next_step(steps, [1, 2], [(0, 0), (0, 1), (2, 0), (2, 1)]) is None


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed("a", 1) == derive_seed("a", 1)
    assert derive_seed("a", 1) != derive_seed("a", 2)
    assert 0 <= derive_seed("x") < 2**63
