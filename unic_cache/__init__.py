"""unic-cache: run each teacher once into a sharded zarr cache, then distil students from the cache alone."""

__version__ = "0.1.0"

from .distill import DistillConfig, distill  # noqa: E402
from .errors import UserError  # noqa: E402
from .extract import ExtractOptions, ExtractReport, extract  # noqa: E402
from .shapes import TASKS, make_shapes  # noqa: E402
from .sources import DatasetIndex, decode_image, open_source  # noqa: E402
from .store import Cache, TeacherStore  # noqa: E402
from .teachers import FAMILIES, Teacher, TeacherInfo, build_teacher, resolve  # noqa: E402
from .views import PARAM_NAMES, PlanConfig, ViewPolicy, plan_views, replay  # noqa: E402

__all__ = [
    "__version__", "DistillConfig", "distill", "UserError", "ExtractOptions", "ExtractReport", "extract", "TASKS", "make_shapes",
    "DatasetIndex", "decode_image", "open_source", "Cache", "TeacherStore", "FAMILIES", "Teacher",
    "TeacherInfo", "build_teacher", "resolve", "PARAM_NAMES", "PlanConfig", "ViewPolicy", "plan_views", "replay",
]
