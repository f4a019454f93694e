from tests.client.trainer.fixtures import (  # noqa: F401 - fixtures
    capture_dir,
    mismatched_student_dir,
    one_torch_thread,
    pair_files,
    student_dir,
)
