"""Feature services: the exact feature set a model version was trained on."""

from feast import FeatureService
from feature_views import category_stats, item_stats, user_stats

from shopguide.feature_spec import FEATURE_SERVICE

shopguide_model = FeatureService(
    name=FEATURE_SERVICE, features=[user_stats, item_stats, category_stats]
)
