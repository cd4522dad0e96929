"""unic-cache: run each teacher once into a sharded zarr cache, then distil students from the cache alone."""

__version__ = "0.1.0"

from .demo import run_demo  # noqa: E402
from .distill import DistillConfig, distill  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluate import EvalOptions, evaluate  # noqa: E402
from .extract import ExtractOptions, ExtractReport, extract  # noqa: E402
from .labels import Labels, Task, read_labels, split_rows  # noqa: E402
from .pipeline import PipelineRun, load_config, run_pipeline  # noqa: E402
from .results import Results  # noqa: E402
from .shapes import TASKS, make_shapes  # noqa: E402
from .sources import DatasetIndex, decode_image, open_source  # noqa: E402
from .store import Cache, TeacherStore  # noqa: E402
from .teachers import FAMILIES, Teacher, TeacherInfo, build_teacher, resolve  # noqa: E402
from .train_teacher import TeacherTrainConfig, train_teacher  # noqa: E402
from .views import PARAM_NAMES, PlanConfig, ViewPolicy, plan_views, replay  # noqa: E402

__all__ = [
    "__version__", "run_demo", "DistillConfig", "distill", "EvalOptions", "evaluate", "Labels", "Task", "read_labels",
    "split_rows", "PipelineRun", "load_config", "run_pipeline", "Results", "TeacherTrainConfig", "train_teacher", "UserError", "ExtractOptions", "ExtractReport", "extract", "TASKS", "make_shapes",
    "DatasetIndex", "decode_image", "open_source", "Cache", "TeacherStore", "FAMILIES", "Teacher",
    "TeacherInfo", "build_teacher", "resolve", "PARAM_NAMES", "PlanConfig", "ViewPolicy", "plan_views", "replay",
]
